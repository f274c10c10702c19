/* SPDX-License-Identifier: MPL-2.0 */
/* The floor of a socket transport between two processes: per buffer, one message from the
 * producer to the consumer and one release back, over a SOCK_SEQPACKET pair, with at most 64
 * buffers outstanding, as memfdsink/memfdsrc exchange them. No GStreamer, no memory, nothing
 * else: the least work the platform allows for that message pattern.
 *
 *   cc -O2 -o socket_floor scripts/socket_floor.c && ./socket_floor [buffers]
 *
 * Prints the nanoseconds per buffer (producer's wall time / buffers). */

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 64
#define MESSAGE 120 /* about a buffer message of protocol 2 with one memory */
#define RELEASE 18  /* a release message with one id */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        /* The consumer: every message it receives is released at once. */
        char buf[MESSAGE], rel[RELEASE] = { 0 };
        close(sv[0]);
        for (;;) {
            ssize_t got = recv(sv[1], buf, sizeof buf, 0);
            if (got <= 0)
                _exit(0);
            if (send(sv[1], rel, sizeof rel, MSG_NOSIGNAL) < 0)
                _exit(1);
        }
    }
    close(sv[1]);
    char msg[MESSAGE], rel[RELEASE];
    memset(msg, 7, sizeof msg);
    long outstanding = 0;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        while (recv(sv[0], rel, sizeof rel, outstanding >= WINDOW ? 0 : MSG_DONTWAIT) > 0)
            outstanding--;
        if (send(sv[0], msg, sizeof msg, MSG_NOSIGNAL) < 0) {
            perror("send");
            return 1;
        }
        outstanding++;
    }
    while (outstanding > 0 && recv(sv[0], rel, sizeof rel, 0) > 0)
        outstanding--;
    double t = now() - t0;
    close(sv[0]);
    waitpid(pid, NULL, 0);
    printf("%.0f\n", t / n * 1e9);
    return 0;
}
