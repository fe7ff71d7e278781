#!/usr/bin/env bash
# Vendors htmx for the dashboard from a pinned PyPI wheel, so the node serves it itself (no CDN, works offline).
#
#   scripts/vendor-htmx.sh          download the wheel, check its sha256, extract htmx and its SSE extension into
#                                   internal/api/assets/ with a provenance file
#   scripts/vendor-htmx.sh --check  do the same into a temporary dir and fail if the checked-in files differ
#
# We never write or edit htmx ourselves: the files are byte-for-byte those of the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=django-htmx
VERSION=1.29.0
WHEEL=django_htmx-1.29.0-py3-none-any.whl
SHA256=0ec5be1645ed71e6787bd75e0250624f00274ac3bb1730f07b6629a95688929b
FILES=(htmx-2.min.js ext/hx-sse-2.min.js)
DEST=internal/api/assets

check=false
[[ "${1:-}" == "--check" ]] && check=true
python="${XNODE_VENV:-.venv}/bin/python"
[[ -x "$python" ]] || python=python3

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  "$PACKAGE==$VERSION" -d "$work"
got="$(sha256sum "$work/$WHEEL" | cut -d' ' -f1)"
if [[ "$got" != "$SHA256" ]]; then
  echo "error: $WHEEL has sha256 $got, expected $SHA256" >&2
  exit 1
fi
out="$work/out"
mkdir -p "$out"
for f in "${FILES[@]}"; do
  "$python" - "$work/$WHEEL" "django_htmx/static/django_htmx/$f" "$out/$(basename "$f")" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[3], "wb") as out:
    out.write(z.read(sys.argv[2]))
PY
done
htmx_version="$(grep -o 'version:"[0-9.]*"' "$out/htmx-2.min.js" | head -1 | cut -d'"' -f2)"
[[ -n "$htmx_version" ]] || { echo "error: no version string in htmx-2.min.js" >&2; exit 1; }
cat >"$out/PROVENANCE" <<TXT
package=$PACKAGE
version=$VERSION
wheel=$WHEEL
wheel_sha256=$SHA256
htmx_version=$htmx_version
files=htmx-2.min.js (django_htmx/static/django_htmx/htmx-2.min.js), hx-sse-2.min.js (django_htmx/static/django_htmx/ext/hx-sse-2.min.js)
regenerate=scripts/vendor-htmx.sh
TXT

if $check; then
  status=0
  for f in htmx-2.min.js hx-sse-2.min.js PROVENANCE; do
    if ! cmp -s "$out/$f" "$DEST/$f"; then
      echo "error: $DEST/$f differs from $PACKAGE $VERSION; run scripts/vendor-htmx.sh" >&2
      status=1
    fi
  done
  [[ $status == 0 ]] && echo "htmx $htmx_version from $PACKAGE $VERSION: vendored files match"
  exit $status
fi
mkdir -p "$DEST"
cp "$out/htmx-2.min.js" "$out/hx-sse-2.min.js" "$out/PROVENANCE" "$DEST/"
echo "vendored htmx $htmx_version from $PACKAGE $VERSION into $DEST"
