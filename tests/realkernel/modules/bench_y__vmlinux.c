// SPDX-License-Identifier: GPL-2.0
#define KLPD_BENCH_SERIES "y"
#define KLPD_BENCH_VMLINUX
#define KLPD_OBJECT NULL
#define KLPD_OLD_FUNC "cmdline_proc_show"
#define KLPD_REPLACE false
#include "klpd_benchpatch.h"
