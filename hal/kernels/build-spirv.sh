#!/usr/bin/env bash
# Compile the test kernels' GLSL (glsl/*.comp) to one SPIR-V module, tf_kernels.spv, with one
# entry point per kernel named like the PTX entries. Needs glslangValidator (Debian:
# glslang-tools) and spirv-link/spirv-val (Debian: spirv-tools).
#
#   hal/kernels/build-spirv.sh [OUT]     # default OUT: hal/kernels/tf_kernels.spv
#
# The committed tf_kernels.spv is checked against this script's output by
# backends/vulkan/tests/kernels_spirv.rs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/tf_kernels.spv}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
parts=()
for name in tf_vector_add_f32 tf_saxpy_f32 tf_fill_u32 tf_busy; do
    # -g0: no debug info (file paths), so the output does not depend on where the checkout is.
    glslangValidator -V --target-env vulkan1.2 -g0 -S comp -e "$name" --source-entrypoint main \
        -o "$tmp/$name.spv" "$here/glsl/$name.comp" >/dev/null
    parts+=("$tmp/$name.spv")
done
spirv-link --target-env vulkan1.2 -o "$tmp/linked.spv" "${parts[@]}"
spirv-val --target-env vulkan1.2 "$tmp/linked.spv"
cp "$tmp/linked.spv" "$out"
