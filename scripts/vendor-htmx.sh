#!/usr/bin/env bash
# Vendor htmx 2 and its SSE extension into kairos_ui/static/vendor/.
#
# The dashboard serves these files itself (no CDN, no JS build step), so they are committed and
# nothing is downloaded at run time. Run this script only to bump a version: find the newest 2.x
# with `npm view htmx.org@2 version` and `npm view htmx-ext-sse@2 version`, edit the pins below,
# run it, and commit the result (VERSIONS.md records what was fetched and how).
#
# Needs: npm (and therefore node) with access to the npm registry, tar.
set -euo pipefail

HTMX_VERSION="2.0.11"
SSE_VERSION="2.2.4"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendor_dir="$repo_root/kairos_ui/static/vendor"
work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

# pack_and_extract SPEC DEST: download SPEC's tarball with `npm pack` (which checks the registry's
# integrity hash) into DEST/, extract it there and print the tarball's sha512 integrity.
pack_and_extract() {
    local spec="$1" dest="$2"
    mkdir -p "$dest"
    local json
    json="$(npm pack "$spec" --json --loglevel=error --pack-destination "$dest")"
    local tarball integrity
    tarball="$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.filename)' "$json")"
    integrity="$(node -e 'const p = JSON.parse(process.argv[1])[0]; console.log(p.integrity)' "$json")"
    tar -xzf "$dest/$tarball" -C "$dest"
    echo "$integrity"
}

# package_field DIR FIELD: a top-level field of DIR/package/package.json, or "" when absent.
package_field() {
    node -e 'const v = require(process.argv[1])[process.argv[2]]; console.log(v === undefined ? "" : v)' \
        "$1/package/package.json" "$2"
}

# licence_of DIR: the package.json `license` field; when a package omits it, the licence named on
# the first line of its LICENSE file, marked as such so VERSIONS.md never overstates the metadata.
licence_of() {
    local declared
    declared="$(package_field "$1" license)"
    if [[ -n "$declared" ]]; then
        echo "$declared"
    else
        echo "$(grep -m1 -v '^[[:space:]]*$' "$1/package/LICENSE") (LICENSE file; package.json has no \`license\` field)"
    fi
}

# check_version DIR EXPECTED: refuse to vendor anything other than the pinned version.
check_version() {
    local actual
    actual="$(package_field "$1" version)"
    if [[ "$actual" != "$2" ]]; then
        echo "vendor-htmx: expected version $2 in $1, got '$actual'" >&2
        exit 1
    fi
}

htmx_integrity="$(pack_and_extract "htmx.org@$HTMX_VERSION" "$work_dir/htmx")"
sse_integrity="$(pack_and_extract "htmx-ext-sse@$SSE_VERSION" "$work_dir/sse")"
check_version "$work_dir/htmx" "$HTMX_VERSION"
check_version "$work_dir/sse" "$SSE_VERSION"

mkdir -p "$vendor_dir"
cp "$work_dir/htmx/package/dist/htmx.min.js" "$vendor_dir/htmx.min.js"
cp "$work_dir/htmx/package/LICENSE" "$vendor_dir/LICENSE.htmx.org"
cp "$work_dir/sse/package/dist/sse.js" "$vendor_dir/sse.js"
cp "$work_dir/sse/package/LICENSE" "$vendor_dir/LICENSE.htmx-ext-sse"

htmx_licence="$(licence_of "$work_dir/htmx")"
sse_licence="$(licence_of "$work_dir/sse")"

sha256_of() { sha256sum "$vendor_dir/$1" | cut -d' ' -f1; }

cat >"$vendor_dir/VERSIONS.md" <<EOF
# Vendored front-end files

Written by \`scripts/vendor-htmx.sh\`; do not edit by hand. The dashboard serves these files
itself: nothing is downloaded at run time.

Fetched with:

\`\`\`
npm pack htmx.org@$HTMX_VERSION htmx-ext-sse@$SSE_VERSION   # via scripts/vendor-htmx.sh
\`\`\`

| file | package | version | licence | from the tarball | sha256 |
|---|---|---|---|---|---|
| \`htmx.min.js\` | htmx.org | $HTMX_VERSION | $htmx_licence | \`package/dist/htmx.min.js\` | \`$(sha256_of htmx.min.js)\` |
| \`LICENSE.htmx.org\` | htmx.org | $HTMX_VERSION | $htmx_licence | \`package/LICENSE\` | \`$(sha256_of LICENSE.htmx.org)\` |
| \`sse.js\` | htmx-ext-sse | $SSE_VERSION | $sse_licence | \`package/dist/sse.js\` | \`$(sha256_of sse.js)\` |
| \`LICENSE.htmx-ext-sse\` | htmx-ext-sse | $SSE_VERSION | $sse_licence | \`package/LICENSE\` | \`$(sha256_of LICENSE.htmx-ext-sse)\` |

Tarball integrity as reported by the npm registry:

- htmx.org@$HTMX_VERSION: \`$htmx_integrity\`
- htmx-ext-sse@$SSE_VERSION: \`$sse_integrity\`

Load order in a page: \`htmx.min.js\` first, then \`sse.js\` (it registers the \`sse\` extension on the
global \`htmx\`), then \`hx-ext="sse"\` on the element that opens the stream.
EOF

echo "vendored htmx.org@$HTMX_VERSION and htmx-ext-sse@$SSE_VERSION into ${vendor_dir#"$repo_root"/}"
