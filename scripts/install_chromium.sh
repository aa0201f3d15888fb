#!/bin/sh
# Install Debian's chromium for the browser test (tests/test_browser.py), when possible.
# CI runs as root with apt; elsewhere the test is skipped unless CAPTIONKIT_REQUIRE_BROWSER=1.
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1
        apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1
    }
fi
command -v chromium >/dev/null 2>&1 || echo "note: chromium is not installed; the browser test will be skipped"
exit 0
