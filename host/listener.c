/*
 * listener.c — listening sockets. Every worker opens its own socket on each listener
 * address with SO_REUSEPORT, so the kernel spreads new connections across workers and
 * no accept is shared between threads.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dp.h"

int dp_listen_socket(const mp_listener_cfg *l, char *err, size_t err_len)
{
    struct sockaddr_storage ss;
    unsigned len = 0;
    int rc = mp_parse_address(l->address, &ss, &len, err, err_len);
    if (rc < 0)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, err_len, "listener %s: socket: %s", l->name, strerror(e));
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        snprintf(err, err_len, "listener %s: cannot listen on %s: %s", l->name, l->address,
                 strerror(e));
        return -e;
    }
    return fd;
}
