// Package symbolize turns stack addresses into function names: kernel
// addresses through <procfs>/kallsyms, user addresses through
// <procfs>/PID/maps and the ELF symbol tables (.symtab, .dynsym) of the
// mapped files.
//
// User symbols must be read while the process still exists: callers resolve
// a stack as soon as it is seen, and keep processes and binaries in the
// bounded caches of UserCache.
package symbolize
