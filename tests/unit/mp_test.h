/*
 * mp_test.h — minimal unit-test harness for the C tests: each MP_TEST is a function,
 * each failed MP_CHECK prints file:line and the expression, and main() prints TAP-like
 * "ok N name" / "not ok N name" lines and exits non-zero when anything failed, which is
 * what automake's test driver reads.
 */
#ifndef MP_TEST_H
#define MP_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*mp_test_fn)(int *failed);

struct mp_test_case {
    const char *name;
    mp_test_fn fn;
};

#define MP_TEST(name) static void name(int *mp_test_failed_)

#define MP_CHECK(expr)                                                              \
    do {                                                                            \
        if (!(expr)) {                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
            *mp_test_failed_ = 1;                                                   \
        }                                                                           \
    } while (0)

#define MP_CHECK_EQ_INT(a, b)                                                      \
    do {                                                                           \
        long long mp_a_ = (long long)(a), mp_b_ = (long long)(b);                  \
        if (mp_a_ != mp_b_) {                                                      \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__,    \
                    __LINE__, #a, #b, mp_a_, mp_b_);                               \
            *mp_test_failed_ = 1;                                                  \
        }                                                                          \
    } while (0)

#define MP_CHECK_STR(a, b)                                                         \
    do {                                                                           \
        const char *mp_a_ = (a), *mp_b_ = (b);                                     \
        if (!mp_a_ || !mp_b_ || strcmp(mp_a_, mp_b_) != 0) {                       \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, \
                    __LINE__, #a, #b, mp_a_ ? mp_a_ : "(null)",                    \
                    mp_b_ ? mp_b_ : "(null)");                                     \
            *mp_test_failed_ = 1;                                                  \
        }                                                                          \
    } while (0)

/* Substring check, for error messages. */
#define MP_CHECK_CONTAINS(hay, needle)                                             \
    do {                                                                           \
        const char *mp_h_ = (hay), *mp_n_ = (needle);                              \
        if (!mp_h_ || !strstr(mp_h_, mp_n_)) {                                     \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__,   \
                    __LINE__, mp_h_ ? mp_h_ : "(null)", mp_n_);                    \
            *mp_test_failed_ = 1;                                                  \
        }                                                                          \
    } while (0)

#define MP_TEST_MAIN(...)                                                          \
    int main(void)                                                                 \
    {                                                                              \
        static const struct mp_test_case cases[] = {__VA_ARGS__};                  \
        size_t n = sizeof(cases) / sizeof(cases[0]);                               \
        int any = 0;                                                               \
        printf("1..%zu\n", n);                                                     \
        for (size_t i = 0; i < n; i++) {                                           \
            int failed = 0;                                                        \
            cases[i].fn(&failed);                                                  \
            printf("%sok %zu %s\n", failed ? "not " : "", i + 1, cases[i].name);   \
            any |= failed;                                                         \
        }                                                                          \
        return any ? 1 : 0;                                                        \
    }

#define MP_CASE(fn) {#fn, fn}

#endif
