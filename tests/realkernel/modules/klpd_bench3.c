// SPDX-License-Identifier: GPL-2.0
#include "klpd_bench_target.h"
