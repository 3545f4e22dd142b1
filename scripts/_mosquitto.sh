# Sourced by scripts/test: make sure Debian's mosquitto is installed (the broker policy tests
# run the exported configuration on a real Mosquitto). Installs it when we can (root + apt).
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing mosquitto (Debian package) …" >&2
    apt-get update -qq
    # Only the binary: keep the package from starting a system broker on port 1883.
    no_start=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      no_start=/usr/sbin/policy-rc.d
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    if [ -n "$no_start" ]; then rm -f "$no_start"; fi
  else
    echo "the tests need Mosquitto: sudo apt-get install mosquitto" >&2
    exit 1
  fi
fi
