/*
 * fuzz_sniff.c — libFuzzer harness for host/sniff.c. Besides letting the sanitizers
 * catch any read past len or undefined behaviour, it checks the contract a data path
 * relies on when it calls mp_sniff again as bytes arrive:
 *   - answers are final: if a prefix got NO_MATCH or MATCH, the whole input gets the
 *     same answer (and the same protocol);
 *   - consumed_hint means what the header says (within the buffer on MATCH, beyond
 *     it on NEED_MORE, 0 on NO_MATCH);
 *   - every string in the result is NUL-terminated inside its array.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -Iinclude -Ihost host/sniff.c tests/fuzz/fuzz_sniff.c -o fuzz_sniff
 *   ./fuzz_sniff -max_len=20000 -max_total_time=60 CORPUS tests/unit/fixtures/sniff
 */
#include "sniff.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_terminated(const char *s, size_t cap)
{
    if (memchr(s, '\0', cap) == NULL)
        abort();
}

static void check_info(const uint8_t *data, size_t size, mp_sniff_result r,
                       const mp_sniff_info *in)
{
    switch (r) {
    case MP_SNIFF_MATCH:
        if (in->protocol <= 0 || in->consumed_hint == 0 || in->consumed_hint > size)
            abort();
        break;
    case MP_SNIFF_NEED_MORE:
        if (in->protocol != 0 || in->consumed_hint <= size ||
            in->consumed_hint > MP_SNIFF_MAX_TLS_BYTES)
            abort();
        break;
    case MP_SNIFF_NO_MATCH:
        if (in->protocol != 0 || in->consumed_hint != 0)
            abort();
        break;
    default:
        abort();
    }
    check_terminated(in->sni, sizeof(in->sni));
    for (int i = 0; i < MP_SNIFF_ALPN_MAX; i++)
        check_terminated(in->alpn[i], sizeof(in->alpn[i]));
    if (in->n_alpn < 0 || in->n_alpn > MP_SNIFF_ALPN_MAX)
        abort();
    check_terminated(in->method, sizeof(in->method));
    check_terminated(in->path, sizeof(in->path));
    check_terminated(in->host, sizeof(in->host));
    check_terminated(in->pg_user, sizeof(in->pg_user));
    check_terminated(in->pg_database, sizeof(in->pg_database));
    (void)data;
}

/* mp_sniff on an exact-size copy, so ASan sees the buffer's real end. */
static mp_sniff_result sniff_copy(const uint8_t *data, size_t size, mp_sniff_info *in)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        abort();
    if (size)
        memcpy(copy, data, size);
    mp_sniff_result r = mp_sniff(copy, size, in);
    check_info(copy, size, r, in);
    free(copy);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mp_sniff_info full, part;
    mp_sniff_result rf = sniff_copy(data, size, &full);

    const size_t cuts[2] = {size / 2, size ? size - 1 : 0};
    for (int i = 0; i < 2; i++) {
        mp_sniff_result rp = sniff_copy(data, cuts[i], &part);
        if (rp == MP_SNIFF_NEED_MORE)
            continue;
        if (rp != rf)
            abort();
        if (rp == MP_SNIFF_MATCH && part.protocol != full.protocol)
            abort();
    }
    return 0;
}
