"""Web endpoints of the JPKI analogue: OCSP at ``/ocsp``, CRLs and CA certificates at the URLs
written in the certificates (:func:`kiban.jpki.profiles.ca_urls`).

``/ocsp`` is a raw ASGI handler (:class:`kiban.jpki.ocsp.OcspResponder`) on the app's fast path,
outside sessions and routing; CRLs and CA certificates are ordinary routes (a few requests a day
per verifier). In production (``KIBAN_MODE=production``) both need a verifier's bearer token.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from kiban.jpki import crl as crl_module
from kiban.jpki import ocsp
from kiban.jpki.models import CertificateAuthority
from kiban.web.problems import Problem

LOG = logging.getLogger("kiban.jpki.api")

MEDIA_CRL = "application/pkix-crl"  # RFC 2585
MEDIA_CERT = "application/pkix-cert"
CRL_MAX_AGE = 3600

router = APIRouter(tags=["jpki"])


def _responder(request: Request) -> ocsp.OcspResponder:
    responder: ocsp.OcspResponder = request.app.state.ocsp
    return responder


def _check_access(request: Request) -> None:
    """Production: only registered verifiers get revocation information (SPEC K5)."""
    responder = _responder(request)
    header = request.headers.get("authorization")
    token = None
    if header is not None:
        scheme, _, credential = header.partition(" ")
        token = credential.strip() if scheme.lower() == "bearer" else ""
    client = request.client.host if request.client else "?"
    if responder.verifier_for(token, client) is None:
        raise Problem(401, "A registered verifier's credential is required.", slug="verifier-required")


def _der_response(der: bytes, media_type: str, max_age: int) -> Response:
    return Response(
        der,
        media_type=media_type,
        headers={"Cache-Control": f"public, max-age={max(0, max_age)}, no-transform"},
    )


def _crl(request: Request, ca_id: str, partition: int) -> Response:
    _check_access(request)
    with request.app.state.session_factory() as session:
        if session.get(CertificateAuthority, ca_id) is None:
            raise Problem(404, f"No CA {ca_id!r}.")
        row = crl_module.latest_crl(session, ca_id, partition)
    if row is None:
        raise Problem(404, f"{ca_id} has published no CRL yet (kiban ca crl).")
    remaining = int((row.next_update - datetime.now(UTC)).total_seconds())
    return _der_response(row.der, MEDIA_CRL, min(CRL_MAX_AGE, remaining))


@router.get(
    "/crl/{ca_id}.crl",
    summary="The CA's full CRL (DER, application/pkix-crl)",
    response_class=Response,
    responses={200: {"content": {MEDIA_CRL: {}}}},
)
def full_crl(request: Request, ca_id: str) -> Response:
    return _crl(request, ca_id, 0)


@router.get(
    "/crl/{ca_id}/{partition}.crl",
    summary="A partition's CRL (falls back to the full CRL while the CA publishes no partitions)",
    response_class=Response,
    responses={200: {"content": {MEDIA_CRL: {}}}},
)
def partition_crl(request: Request, ca_id: str, partition: int) -> Response:
    if partition < 1:
        raise Problem(404, "Partitions are numbered from 1.")
    return _crl(request, ca_id, partition)


@router.get(
    "/ca/{ca_id}.cer",
    summary="The CA's own certificate (DER, application/pkix-cert; the AIA caIssuers URL)",
    response_class=Response,
    responses={200: {"content": {MEDIA_CERT: {}}}},
)
def ca_certificate(request: Request, ca_id: str) -> Response:
    # Public by nature: a CA certificate is what a relying party needs to start with.
    with request.app.state.session_factory() as session:
        ca = session.get(CertificateAuthority, ca_id)
        if ca is None:
            raise Problem(404, f"No CA {ca_id!r}.")
        return _der_response(ca.certificate_der, MEDIA_CERT, 86_400)


def anonymous_rate() -> float:
    """Requests per second per client address without a verifier token
    (``KIBAN_OCSP_ANONYMOUS_RATE``, default 50)."""
    try:
        return float(os.environ.get("KIBAN_OCSP_ANONYMOUS_RATE", "50"))
    except ValueError:
        LOG.warning("KIBAN_OCSP_ANONYMOUS_RATE is not a number; using 50")
        return 50.0


def register_web(app: FastAPI) -> None:
    """OCSP on the fast path, CRL and CA certificate routes, the OCSP metrics."""
    from kiban.jpki.keys import KeyStoreError, keystore_from_settings

    settings = app.state.settings
    try:
        keystore = keystore_from_settings(settings)
    except KeyStoreError as error:
        LOG.error("OCSP responder without a key store (pre-signed responses only): %s", error)
        keystore = None
    ocsp.configure(keystore)
    responder = ocsp.OcspResponder(
        app.state.session_factory,
        keystore,
        anonymous_rate=anonymous_rate(),
        allow_anonymous=settings.mode != "production",
    )
    app.state.ocsp = responder
    app.state.fast_paths["/ocsp"] = responder
    app.state.metrics_registry.register(responder)
    app.include_router(router)
    # The verifier registry, 新旧紐付け, 基本4情報 and the operator's screens.
    from kiban.jpki.verifiers import api as verifiers_api

    verifiers_api.register_web(app)
