// SPDX-License-Identifier: GPL-2.0
#define KLPD_BENCH_SERIES "x"
#define KLPD_OBJECT "klpd_bench3"
#define KLPD_OLD_FUNC "klpd_bench_value"
#define KLPD_REPLACE false
#include "klpd_benchpatch.h"
