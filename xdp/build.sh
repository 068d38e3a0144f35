#!/bin/sh
# Builds xdp/turnd_xdp.o (BPF ELF with BTF) from xdp/turnd_xdp.c.
# Needs clang with the BPF target (Debian: clang-14) and libbpf-dev (bpf/bpf_helpers.h).
# Usage: xdp/build.sh [output.o]   (CLANG=... to pick the compiler, EXTRA_CFLAGS=-D...)
# Also builds xdp_pass.o (a pass-everything program smoke.sh needs) next to output.o.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/turnd_xdp.o}
if [ -z "${CLANG:-}" ]; then
	for c in clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
		if command -v "$c" >/dev/null 2>&1; then CLANG=$c; break; fi
	done
fi
[ -n "${CLANG:-}" ] || { echo "build.sh: no clang found (apt-get install clang-14 libbpf-dev)" >&2; exit 1; }
arch_inc=/usr/include/$(uname -m)-linux-gnu   # asm/types.h on Debian multiarch
# shellcheck disable=SC2086 # EXTRA_CFLAGS is a list
"$CLANG" -O2 -g -Wall -Werror -target bpf -D__BPF__ ${EXTRA_CFLAGS:-} \
	-I "$arch_inc" -c "$here/turnd_xdp.c" -o "$out"
"$CLANG" -O2 -g -Wall -Werror -target bpf -I "$arch_inc" -c "$here/xdp_pass.c" -o "$(dirname "$out")/xdp_pass.o"
echo "built $out with $("$CLANG" --version | head -n1)"
