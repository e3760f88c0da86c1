/*
 * floor: the least CPU an HTTP check on a fresh TCP connection can cost, for bench/recovery.sh.
 *
 * Usage: floor BASE_PORT SERVERS CHECKS_PER_SECOND BATCH SECONDS
 *   Every 1/(CHECKS_PER_SECOND/BATCH) s, opens BATCH connections at once (non-blocking, one
 *   epoll set), sends `GET /p/N HTTP/1.1` with `Connection: close` on each, reads until the
 *   status line arrived, closes; the targets are 127.0.0.1:BASE_PORT+1 .. +SERVERS in turn.
 *   Prints the CPU per check (user and system, getrusage) and the checks answered 200.
 *
 * It does nothing but the system calls a check needs (socket, connect, epoll_ctl, write, read,
 * close), with no parsing beyond the status code, no timeouts, no logging, no state. What it
 * costs is the kernel's work for a connection, its wake-ups and nothing else: a floor for any
 * watchdog that opens a connection per check, to set next to monit's figure in the same run.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double ms(struct timeval t) { return t.tv_sec * 1e3 + t.tv_usec / 1e3; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: floor BASE_PORT SERVERS CHECKS_PER_SECOND BATCH SECONDS\n");
        return 2;
    }
    int base = atoi(argv[1]), servers = atoi(argv[2]), rate = atoi(argv[3]);
    int batch = atoi(argv[4]), seconds = atoi(argv[5]);
    if (base <= 0 || servers <= 0 || rate <= 0 || batch <= 0 || seconds <= 0 || batch > 4096) {
        fprintf(stderr, "floor: every argument must be a positive number (BATCH <= 4096)\n");
        return 2;
    }
    int ep = epoll_create1(0);
    int *fds = calloc(batch, sizeof *fds), *sent = calloc(batch, sizeof *sent);
    struct epoll_event *events = calloc(batch, sizeof *events);
    if (ep < 0 || !fds || !sent || !events) {
        perror("floor");
        return 1;
    }
    double period = (double)batch / rate, next = now();
    long checks = 0, answered = 0, target = 0;
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    double end = now() + seconds;
    while (now() < end) {
        for (int i = 0; i < batch; i++) {
            struct sockaddr_in a = {.sin_family = AF_INET,
                                    .sin_port = htons(base + 1 + target++ % servers)};
            inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
            fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            sent[i] = 0;
            if (connect(fds[i], (struct sockaddr *)&a, sizeof a) && errno != EINPROGRESS) {
                close(fds[i]);
                fds[i] = -1;
                continue;
            }
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = i};
            epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        }
        int open = 0;
        for (int i = 0; i < batch; i++) open += fds[i] >= 0;
        while (open > 0) {
            int n = epoll_wait(ep, events, batch, 2000);
            if (n <= 0) break;
            for (int j = 0; j < n; j++) {
                int i = events[j].data.u32;
                if (fds[i] < 0) continue;
                if (!sent[i] && (events[j].events & EPOLLOUT)) {
                    char req[128];
                    int len = snprintf(req, sizeof req,
                                       "GET /p/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                       "Connection: close\r\n\r\n", i);
                    sent[i] = write(fds[i], req, len) == len;
                }
                char buf[4096];
                ssize_t got = sent[i] ? read(fds[i], buf, sizeof buf) : -1;
                if (got > 12 || (events[j].events & (EPOLLERR | EPOLLHUP))) {
                    answered += got > 12 && memcmp(buf + 9, "200", 3) == 0;
                    close(fds[i]);
                    fds[i] = -1;
                    open--;
                }
            }
        }
        for (int i = 0; i < batch; i++)
            if (fds[i] >= 0) close(fds[i]);
        checks += batch;
        next += period;
        double wait = next - now();
        if (wait > 0) {
            struct timespec t = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&t, NULL);
        }
    }
    getrusage(RUSAGE_SELF, &r1);
    double user = ms(r1.ru_utime) - ms(r0.ru_utime), sys = ms(r1.ru_stime) - ms(r0.ru_stime);
    printf("checks %ld answered %ld user_ms_per_check %.4f sys_ms_per_check %.4f\n", checks,
           answered, user / checks, sys / checks);
    return answered == checks ? 0 : 1;
}
