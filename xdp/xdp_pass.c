// SPDX-License-Identifier: MIT OR GPL-2.0-only
/* Pass-everything XDP program. smoke.sh attaches it natively to the veth
 * peers of the relay's interfaces: a native-mode veth delivers frames that
 * the relay side sends with XDP_TX only to a peer with an XDP program (GRO
 * on the peer is enough for bpf_redirect, not for XDP_TX; see README.md). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
