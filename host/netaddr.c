/*
 * netaddr.c — see netaddr.h. inet_pton does the address syntax; this file adds the
 * mapped form and strict prefix lengths (1-3 digits, in range for the family).
 */
#include "netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void map_v4(uint8_t out[16], const void *a4)
{
    memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    memcpy(out + 12, a4, 4);
}

int mp_ip_parse(const char *text, uint8_t out[16], bool *is_v4)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, text, &a4) == 1) {
        map_v4(out, &a4);
        *is_v4 = true;
        return 0;
    }
    if (inet_pton(AF_INET6, text, &a6) == 1) {
        memcpy(out, &a6, 16);
        *is_v4 = false;
        return 0;
    }
    return -EINVAL;
}

bool mp_sockaddr_ip(const struct sockaddr *sa, uint8_t out[16])
{
    if (!sa)
        return false;
    /* copies: the caller's sockaddr need not be aligned for the family's struct */
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof(sin));
        map_v4(out, &sin.sin_addr);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof(sin6));
        memcpy(out, &sin6.sin6_addr, 16);
        return true;
    }
    return false;
}

int mp_cidr_parse(const char *text, bool need_prefix, uint8_t net[16], unsigned *bits,
                  char *why, size_t why_len)
{
    char ip[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(text, '/');
    size_t n = slash ? (size_t)(slash - text) : strlen(text);
    if (n == 0) {
        snprintf(why, why_len, "missing the address (want a CIDR like 10.0.0.0/8 or "
                 "2001:db8::/32)");
        return -EINVAL;
    }
    if (!slash && need_prefix) {
        snprintf(why, why_len, "needs a prefix length (a CIDR like 10.0.0.0/8)");
        return -EINVAL;
    }
    bool v4 = false;
    if (n >= sizeof(ip) || (memcpy(ip, text, n), ip[n] = '\0', mp_ip_parse(ip, net, &v4) < 0)) {
        snprintf(why, why_len, "\"%.*s\" is not an IPv4 or IPv6 address", (int)(n > 64 ? 64 : n),
                 text);
        return -EINVAL;
    }
    unsigned max = v4 ? 32 : 128, len = max;
    if (slash) {
        const char *p = slash + 1;
        size_t digits = strspn(p, "0123456789");
        if (digits == 0 || p[digits] != '\0' || digits > 3) {
            snprintf(why, why_len, "prefix length \"%.16s\" is not a number 0..%u", p, max);
            return -EINVAL;
        }
        len = (unsigned)strtoul(p, NULL, 10);
        if (len > max) {
            snprintf(why, why_len, "prefix length %u is out of range 0..%u for an %s address",
                     len, max, v4 ? "IPv4" : "IPv6");
            return -EINVAL;
        }
    }
    *bits = v4 ? 96 + len : len;
    for (unsigned b = *bits; b < 128; b++)
        net[b / 8] &= (uint8_t)~(0x80u >> (b % 8));
    return 0;
}

bool mp_ip_in_net(const uint8_t ip[16], const uint8_t net[16], unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(ip, net, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (ip[whole] & mask) == net[whole];
}
