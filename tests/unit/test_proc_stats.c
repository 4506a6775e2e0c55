/*
 * test_proc_stats.c — checks RSS and CPU sampling against work the test itself does:
 * touching a known amount of memory, spinning one core, sleeping.
 */
#include "proc_stats.h"
#include "mp_test.h"

#include <errno.h>
#include <math.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

/* Memcheck shadows every byte the program touches with two more bits, so under it RSS
 * really does grow by a quarter more than the block; allow for that there only. */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() RUNNING_ON_VALGRIND
#endif
#endif
#ifndef UNDER_VALGRIND
#define UNDER_VALGRIND() 0
#endif

#define MIB (1024ull * 1024ull)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Written by the spin loop so the compiler cannot drop the loop as dead. */
static volatile unsigned long busy_sink;

static void busy_for(double seconds)
{
    double end = now_s() + seconds;
    while (now_s() < end)
        for (int i = 0; i < 1000; i++)
            busy_sink += (unsigned long)i;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* What the sampler should report for an interval: the CPU this process really got over
 * its wall time. Spinning gets less than a whole CPU when other work competes for the
 * machine (a loaded CI runner), so the reference is measured, not assumed. */
typedef struct {
    double wall0, cpu0;
} span;

static span span_start(void) { return (span){now_s(), cpu_s()}; }

static double span_percent(span sp) { return (cpu_s() - sp.cpu0) / (now_s() - sp.wall0) * 100.0; }

/* The sampler counts in clock ticks (10 ms): over 0.3 s that is a few points either way. */
static int near(double got, double want) { return fabs(got - want) <= 20.0; }

static void sleep_for(double seconds)
{
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

MP_TEST(rss_is_positive)
{
    uint64_t rss = 0;
    MP_CHECK_EQ_INT(mp_proc_rss_bytes(&rss), 0);
    MP_CHECK(rss > 0);
    /* Current RSS can never exceed the peak the kernel reports (KiB on Linux). */
    struct rusage ru;
    MP_CHECK_EQ_INT(getrusage(RUSAGE_SELF, &ru), 0);
    MP_CHECK(rss <= (uint64_t)ru.ru_maxrss * 1024ull + 1 * MIB);
}

MP_TEST(rss_grows_with_touched_memory)
{
    const size_t size = 64 * MIB;
    uint64_t before = 0, after = 0;
    MP_CHECK_EQ_INT(mp_proc_rss_bytes(&before), 0);
    unsigned char *block = malloc(size);
    MP_CHECK(block != NULL);
    if (!block)
        return;
    memset(block, 0xA5, size);
    /* Read it back through volatile so the memset cannot be dropped as dead. */
    volatile unsigned char *vb = block;
    MP_CHECK(vb[size - 1] == 0xA5 && vb[size / 2] == 0xA5);
    MP_CHECK_EQ_INT(mp_proc_rss_bytes(&after), 0);
    free(block);

    double grew = (double)after - (double)before;
    double lo = 0.8 * (double)size, hi = (UNDER_VALGRIND() ? 1.45 : 1.2) * (double)size;
    if (grew < lo || grew > hi) {
        fprintf(stderr, "rss grew by %.1f MiB, want %.1f..%.1f MiB\n", grew / (double)MIB,
                lo / (double)MIB, hi / (double)MIB);
        *mp_test_failed_ = 1;
    }
}

MP_TEST(cpu_percent_tracks_busy_and_idle)
{
    mp_proc_sampler s = {0};
    double first = mp_proc_cpu_percent(&s);
    span sp = span_start();
    MP_CHECK(first >= 0.0 && isfinite(first));

    busy_for(0.3);
    double busy = mp_proc_cpu_percent(&s);
    double want = span_percent(sp);
    if (!near(busy, want) || want < 10.0) {
        fprintf(stderr, "busy: %.1f%%, the process really used %.1f%%\n", busy, want);
        *mp_test_failed_ = 1;
    }

    /* Inside 100 ms: the previous value, not a fresh noisy one. */
    double again = mp_proc_cpu_percent(&s);
    MP_CHECK(again == busy);

    sleep_for(0.3);
    double idle = mp_proc_cpu_percent(&s);
    if (!(idle >= 0.0 && idle < 30.0)) {
        fprintf(stderr, "idle: %.1f%%\n", idle);
        *mp_test_failed_ = 1;
    }
}

/* The first call on a fresh sampler covers the whole life of the process, so after
 * spinning it is clearly above zero; a sampler that only started counting at the first
 * call would report 0 here. */
MP_TEST(first_call_measures_since_process_start)
{
    busy_for(0.2);
    mp_proc_sampler s = {0};
    double first = mp_proc_cpu_percent(&s);
    if (!(first > 5.0 && first <= 400.0)) {
        fprintf(stderr, "first: %.1f%%\n", first);
        *mp_test_failed_ = 1;
    }
    MP_CHECK(s.primed);
    MP_CHECK(s.last_cpu_ticks > 0);
}

/* comm is ours to set, and a name with spaces and parentheses is exactly what breaks a
 * parser that splits /proc/self/stat on the first ')' or counts fields from the start. */
MP_TEST(comm_with_spaces_and_parens)
{
    char saved[17] = {0};
    MP_CHECK_EQ_INT(prctl(PR_GET_NAME, saved, 0, 0, 0), 0);
    MP_CHECK_EQ_INT(prctl(PR_SET_NAME, "a) 1 2 (b) 3", 0, 0, 0), 0);
    busy_for(0.15);
    mp_proc_sampler s = {0};
    double first = mp_proc_cpu_percent(&s);
    span sp = span_start();
    busy_for(0.3);
    double busy = mp_proc_cpu_percent(&s);
    double want = span_percent(sp);
    prctl(PR_SET_NAME, saved, 0, 0, 0);
    MP_CHECK(first > 0.0 && first <= 400.0);
    /* a parser that split the stat line at the wrong parenthesis would read other
     * fields as the CPU times and land far from the real figure */
    if (!near(busy, want) || want < 10.0) {
        fprintf(stderr, "busy with odd comm: %.1f%%, the process really used %.1f%%\n", busy,
                want);
        *mp_test_failed_ = 1;
    }
}

MP_TEST_MAIN(MP_CASE(rss_is_positive), MP_CASE(rss_grows_with_touched_memory),
             MP_CASE(cpu_percent_tracks_busy_and_idle),
             MP_CASE(first_call_measures_since_process_start),
             MP_CASE(comm_with_spaces_and_parens))
