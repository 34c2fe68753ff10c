/* histslot: hist_slot of bpf/include/hist.h as a program of its own, for
 * the tests only (probes/histslot_test.go, TestSlotMatchesC): run in the
 * kernel with BPF_PROG_TEST_RUN, it returns the slot of its first argument,
 * which the test compares with Go's hist.Slot. Not part of any probe. */
#include "common.h"
#include "hist.h"

SEC("raw_tp")
int hist_slot_of(__u64 *ctx)
{
	return hist_slot(ctx[0]);
}
