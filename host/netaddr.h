/*
 * netaddr.h — IPv4 and IPv6 addresses in one 16-byte form (IPv4 mapped into
 * ::ffff:0:0/96), CIDR parsing and prefix tests. One implementation for the config
 * loader, NLB routing and rate limits, so "10.0.0.0/8" means the same everywhere.
 */
#ifndef MP_HOST_NETADDR_H
#define MP_HOST_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* An address in text form (no prefix) into the mapped form. 0 or -EINVAL. */
int mp_ip_parse(const char *text, uint8_t out[16], bool *is_v4);

/* A socket address's IP in the mapped form; false for other families. */
bool mp_sockaddr_ip(const struct sockaddr *sa, uint8_t out[16]);

/* "10.0.0.0/8", "2001:db8::/32" or, unless need_prefix, a bare address (one host).
 * *bits counts over the mapped form (IPv4 /8 = 104); host bits are cleared from net.
 * On failure returns -EINVAL and why says what is wrong, as a phrase such as
 * "prefix length 33 is out of range 0..32 for an IPv4 address". */
int mp_cidr_parse(const char *text, bool need_prefix, uint8_t net[16], unsigned *bits,
                  char *why, size_t why_len);

/* Whether ip lies in net/bits (both mapped). */
bool mp_ip_in_net(const uint8_t ip[16], const uint8_t net[16], unsigned bits);

#endif
