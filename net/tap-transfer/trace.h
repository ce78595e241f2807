#include "trace/trace-net_tap_transfer.h"
