// SPDX-License-Identifier: GPL-2.0
#define KLPD_BENCH_SERIES "y"
#define KLPD_OBJECT "klpd_bench2"
#define KLPD_OLD_FUNC "klpd_bench_value"
#define KLPD_REPLACE false
#include "klpd_benchpatch.h"
