# Sourced by scripts/test.sh: makes sure what the tests drive is on the machine.
# Debian packages: chromium (browser tests), fonts-noto-cjk (Japanese glyphs in screenshots),
# fonts-ipaexfont-mincho (embedded in issued PDFs), poppler-utils and zbar-tools (PDFs rendered
# and their QR codes scanned in tests), softhsm2 (PKCS#11 token for CA keys), openssl (checks our
# certificates, CRLs and OCSP), nats-server (event bus tests; started when nothing
# listens on 4222).

_listening() { (echo > "/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1; }

_apt() {
  if [ "$(id -u)" != 0 ]; then echo "services: please install $*" >&2; return 1; fi
  if [ -z "${KIBAN_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    export KIBAN_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_test_services() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -d /usr/share/fonts/opentype/noto ] || missing+=(fonts-noto-cjk)
  [ -f /usr/share/fonts/opentype/ipaexfont-mincho/ipaexm.ttf ] || missing+=(fonts-ipaexfont-mincho)
  command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
  command -v zbarimg >/dev/null 2>&1 || missing+=(zbar-tools)
  command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  if ! _listening 4222 && ! command -v nats-server >/dev/null 2>&1; then missing+=(nats-server); fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "services: installing ${missing[*]}"
    _apt "${missing[@]}" || { echo "services: could not install ${missing[*]}" >&2; return 1; }
  fi
  if ! _listening 4222; then
    mkdir -p /tmp/kiban-nats
    echo "services: starting nats-server with JetStream on 127.0.0.1:4222"
    nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/kiban-nats >/tmp/kiban-nats/server.log 2>&1 &
    for _ in $(seq 1 50); do _listening 4222 && break; sleep 0.1; done
  fi
  return 0
}
