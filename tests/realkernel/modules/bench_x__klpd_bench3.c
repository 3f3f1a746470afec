// SPDX-License-Identifier: GPL-2.0
#define KLPD_BENCH_SERIES "x"
#define KLPD_OBJECT "klpd_bench3"
#include "klpd_benchpatch.h"
