/* mlx-rs calls macOS's mach_approximate_time() to seed RandomState::new().
 * Off Apple platforms the program provides it: a monotonic nanosecond counter. */
#include <stdint.h>
#include <time.h>

uint64_t mach_approximate_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
