/*
 * valgrind_hints.h — what valgrind cannot see for itself. The kernel fills io_uring's
 * provided receive buffers behind valgrind's back, so memcheck would call every byte a
 * peer sent "uninitialised"; the data path marks each received range as written. With
 * valgrind's headers absent (CI, release builds) the hint compiles to nothing, and with
 * them it costs a few instructions when not running under valgrind.
 */
#ifndef MP_HOST_VALGRIND_HINTS_H
#define MP_HOST_VALGRIND_HINTS_H

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define MP_MEM_WRITTEN_BY_KERNEL(p, n) ((void)VALGRIND_MAKE_MEM_DEFINED((p), (n)))
#endif
#endif

#ifndef MP_MEM_WRITTEN_BY_KERNEL
#define MP_MEM_WRITTEN_BY_KERNEL(p, n) ((void)(p), (void)(n))
#endif

#endif
