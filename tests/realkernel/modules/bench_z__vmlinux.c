// SPDX-License-Identifier: GPL-2.0
#define KLPD_BENCH_SERIES "z"
#define KLPD_BENCH_VMLINUX
#define KLPD_OBJECT NULL
#include "klpd_benchpatch.h"
