// SPDX-License-Identifier: GPL-2.0
#define KLPD_BENCH_SERIES "y"
#define KLPD_OBJECT "klpd_bench2"
#include "klpd_benchpatch.h"
