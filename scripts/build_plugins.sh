#!/usr/bin/env bash
# Build the WebAssembly plugins (plugins/Cargo.toml) for wasm32-wasip2 and
# install the bundled ones into plugins/dist/<name>/ (plugin.toml + .wasm),
# the directory docqa loads plugins from by default.
#   scripts/build_plugins.sh            build and install
#   MAGPIE_PLUGINS_DIST=dir scripts/build_plugins.sh   install elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "==> rustup target add wasm32-wasip2"
    rustup target add wasm32-wasip2
fi

echo "==> building plugins for wasm32-wasip2"
cargo build --manifest-path plugins/Cargo.toml --release --locked --target wasm32-wasip2

out=plugins/target/wasm32-wasip2/release
dist=${MAGPIE_PLUGINS_DIST:-plugins/dist}
for name in calculator solver search fetch; do
    mkdir -p "$dist/$name"
    cp "plugins/$name/plugin.toml" "$dist/$name/plugin.toml"
    cp "$out/magpie_plugin_$name.wasm" "$dist/$name/$name.wasm"
done
echo "==> plugins installed in $dist: $(ls "$dist" | tr '\n' ' ')"
