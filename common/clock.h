/* The one clock helper: every time georeg reads comes from here. Wall-clock time
 * (CLOCK_REALTIME) is for timestamps that leave the process (log lines, audit
 * entries, event times, expiries); monotonic time (CLOCK_BOOTTIME, which also
 * counts while the machine is suspended, as the peers' clocks do) is for durations
 * and deadlines inside it (lease deadlines, waits, timeouts). */
#ifndef GEOREG_CLOCK_H
#define GEOREG_CLOCK_H

#include <stdint.h>
#include <time.h>

/* clock_wall_ms: milliseconds since the Unix epoch. */
uint64_t clock_wall_ms(void);
/* clock_wall_us: microseconds since the Unix epoch (audit entries). */
uint64_t clock_wall_us(void);
/* clock_wall_s: seconds since the Unix epoch. */
uint64_t clock_wall_s(void);
/* clock_mono_ms: milliseconds on the monotonic clock (an arbitrary origin). */
uint64_t clock_mono_ms(void);
/* clock_wall_deadline: the CLOCK_REALTIME time ms from now, as the absolute
 * timespec pthread_cond_timedwait and pthread_rwlock_timedwrlock take. */
struct timespec clock_wall_deadline(uint64_t ms);

#endif
