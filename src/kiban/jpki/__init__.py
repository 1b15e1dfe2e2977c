"""JPKI analogue (公的個人認証サービス, SPEC K5) and the organisation PKI (LGPKI analogue, SPEC K8).

- :mod:`kiban.jpki.keys`: CA key storage (files for the embedded demo, PKCS#11 in production).
- :mod:`kiban.jpki.profiles`: certificate profiles, validity and character rules.
- :mod:`kiban.jpki.service`: hierarchies, issuance, revocation rules, event handlers.
- :mod:`kiban.jpki.crl`: full and partitioned CRLs, completeness checks.

Design notes: ``docs/jpki.md``.
"""
