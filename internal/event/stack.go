package event

import "path"

// KernelModule is the Module of frames in the kernel image itself.
const KernelModule = "kernel"

// FormatStack formats a stack, one string a frame, as the reports and the
// live views show it: Frame.String ("symbol+0xoff"), with the module's base
// name in brackets when the frame has a symbol outside the kernel proper
// ("bch_data_insert+0x3c [bcache]", "pwrite64+0x47 [libc.so.6]"). Never nil.
func FormatStack(fs []Frame) []string {
	out := make([]string, 0, len(fs))
	for _, f := range fs {
		s := f.String()
		if f.Symbol != "" && f.Module != "" && f.Module != KernelModule {
			s += " [" + path.Base(f.Module) + "]"
		}
		out = append(out, s)
	}
	return out
}
