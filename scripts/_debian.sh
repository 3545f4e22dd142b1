# Sourced by scripts/test: make sure the Debian programs the tests run are installed:
# mosquitto (the broker policy tests run the exported configuration on a real Mosquitto)
# nginx (the reverse-proxy example in deploy/nginx/ is tested in front of the API) and
# Prometheus's promtool (it checks the names of every metric the processes export) and
# Chromium (the console's tests drive it with Playwright; `playwright install` would
# download a browser of its own, which these machines cannot).
# Installs what is missing when we can (root + apt).
missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)  # rates deploy/systemd/
command -v chromium >/dev/null || missing+=(chromium)  # Playwright drives it (the console)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (Debian packages) …" >&2
    apt-get update -qq
    # Only the binaries: keep the packages from starting a system broker, web server or
    # Prometheus.
    no_start=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      no_start=/usr/sbin/policy-rc.d
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
    if [ -n "$no_start" ]; then rm -f "$no_start"; fi
  else
    echo "the tests need ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
