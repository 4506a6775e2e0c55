/*
 * test_alb_access_log.c — access log lines: nginx's combined format field by field,
 * escaping of hostile bytes in both formats, "-" for absent fields, JSON fields and
 * types, and appends from several threads arriving as whole lines.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alb_access_log.h"
#include "mp_test.h"

#define S(x) x, sizeof(x) - 1

static alb_access_entry entry(struct sockaddr_in *a)
{
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    inet_pton(AF_INET, "203.0.113.9", &a->sin_addr);
    alb_access_entry e = {0};
    e.peer = (struct sockaddr *)a;
    e.start_wall_us = 1700000000ull * 1000000 + 123456;
    e.latency_us = 2500;
    e.method = "GET";
    e.method_len = 3;
    e.target = "/a?b=1";
    e.target_len = 6;
    e.host = "example.test";
    e.host_len = 12;
    e.status = 200;
    e.bytes_out = 1024;
    e.route_id = "r1";
    e.upstream = "127.0.0.1:9000";
    return e;
}

MP_TEST(combined_format)
{
    setenv("TZ", "UTC", 1);
    tzset();
    struct sockaddr_in a;
    alb_access_entry e = entry(&a);
    e.user_agent = "curl/8.0";
    e.user_agent_len = 8;
    char line[512];
    size_t n = alb_access_log_format(ALB_LOG_COMBINED, &e, line, sizeof(line));
    MP_CHECK_EQ_INT(n, strlen(line));
    MP_CHECK_STR(line, "203.0.113.9 - - [14/Nov/2023:22:13:20 +0000] \"GET /a?b=1 HTTP/1.1\" "
                       "200 1024 \"-\" \"curl/8.0\"\n");
}

MP_TEST(hostile_bytes_escaped)
{
    struct sockaddr_in a;
    alb_access_entry e = entry(&a);
    e.user_agent = "x\"\n\x01\xff\\";
    e.user_agent_len = 6;
    char line[512];
    alb_access_log_format(ALB_LOG_COMBINED, &e, line, sizeof(line));
    MP_CHECK_CONTAINS(line, "\"x\\\"\\x0a\\x01\\xff\\\\\"");
    MP_CHECK(strchr(line, '\n') == line + strlen(line) - 1);
    alb_access_log_format(ALB_LOG_JSON, &e, line, sizeof(line));
    MP_CHECK_CONTAINS(line, "\"user_agent\":\"x\\\"\\u000a\\u0001\\u00ff\\\\\"");
    MP_CHECK(strchr(line, '\n') == line + strlen(line) - 1);
}

MP_TEST(json_format)
{
    setenv("TZ", "UTC", 1);
    tzset();
    struct sockaddr_in a;
    alb_access_entry e = entry(&a);
    e.tls = 1;
    char line[1024];
    alb_access_log_format(ALB_LOG_JSON, &e, line, sizeof(line));
    MP_CHECK_CONTAINS(line, "{\"time\":\"2023-11-14T22:13:20.123+00:00\"");
    MP_CHECK_CONTAINS(line, "\"remote_addr\":\"203.0.113.9\"");
    MP_CHECK_CONTAINS(line, "\"status\":200,");
    MP_CHECK_CONTAINS(line, "\"request_time\":0.002500");
    MP_CHECK_CONTAINS(line, "\"route\":\"r1\"");
    MP_CHECK_CONTAINS(line, "\"upstream\":\"127.0.0.1:9000\"");
    MP_CHECK_CONTAINS(line, "\"referer\":\"\"");
    MP_CHECK_CONTAINS(line, "\"scheme\":\"https\"}\n");
}

MP_TEST(long_fields_are_cut_but_lines_end)
{
    struct sockaddr_in a;
    alb_access_entry e = entry(&a);
    char *big = malloc(100000);
    memset(big, 'a', 100000);
    e.target = big;
    e.target_len = 100000;
    char line[8192];
    size_t n = alb_access_log_format(ALB_LOG_JSON, &e, line, sizeof(line));
    MP_CHECK(n < sizeof(line));
    MP_CHECK(line[n - 1] == '\n');
    MP_CHECK_CONTAINS(line, "\"scheme\":\"http\"}");
    free(big);
}

static alb_access_log *shared_log;

static void *writer(void *arg)
{
    (void)arg;
    struct sockaddr_in a;
    alb_access_entry e = entry(&a);
    for (int i = 0; i < 2000; i++)
        alb_access_log_write(shared_log, &e);
    return NULL;
}

MP_TEST(concurrent_appends_are_whole_lines)
{
    char path[] = "/tmp/alb-access-XXXXXX";
    int fd = mkstemp(path);
    MP_CHECK(fd >= 0);
    close(fd);
    char err[256];
    MP_CHECK(alb_access_log_open(path, ALB_LOG_COMBINED, &shared_log, err, sizeof(err)) == 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, writer, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    alb_access_log_close(shared_log);
    FILE *f = fopen(path, "r");
    char buf[1024];
    int lines = 0, good = 0;
    while (fgets(buf, sizeof(buf), f)) {
        lines++;
        good += strncmp(buf, "203.0.113.9 - - [", 17) == 0 && strstr(buf, "\" 200 1024 ");
    }
    fclose(f);
    unlink(path);
    MP_CHECK_EQ_INT(lines, 8000);
    MP_CHECK_EQ_INT(good, 8000);
    MP_CHECK(alb_access_log_open("/nonexistent/dir/log", ALB_LOG_JSON, &shared_log, err,
                                 sizeof(err)) < 0);
    MP_CHECK_CONTAINS(err, "access log /nonexistent/dir/log: No such file");
}

MP_TEST_MAIN(MP_CASE(combined_format), MP_CASE(hostile_bytes_escaped), MP_CASE(json_format),
             MP_CASE(long_fields_are_cut_but_lines_end),
             MP_CASE(concurrent_appends_are_whole_lines))
