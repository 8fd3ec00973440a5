/*
 * stockade-agent: the main process of a workspace container run by Stockade's Podman runtime.
 *
 * It connects to the host's SOCK_SEQPACKET socket (argv[1], mounted read-only into the
 * container) and starts session programs on request, so a login enters the running container
 * without a `podman exec` process: each child inherits everything the container gives its main
 * process (namespaces, cgroup, uid, no capabilities, no_new_privs, the seccomp filter).
 *
 * Messages (one per packet, integers little-endian u32):
 *   host -> agent  'S' id flags | argv... "" env... "" cwd   with 1 fd (PTY, flags&1) or 3 fds
 *                  'K' id signo                              signal the session's process group
 *   agent -> host  'H'                                       hello, once per connection
 *                  'P' id pid                                started (pid in the container)
 *                  'E' id errno                              could not start
 *                  'X' id wait-status                        ended
 * When the host goes away, every session gets SIGHUP and the agent reconnects, so the container
 * survives a gateway restart. As PID 1 it also reaps orphans; signals sent to it from inside the
 * container are dropped by the kernel (PID 1, default actions), so only the host can stop it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_MSG 65536
#define MAX_SESSIONS 1024
#define MAX_ITEMS 512

struct session { uint32_t id; pid_t pid; };
static struct session sessions[MAX_SESSIONS];

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}
static uint32_t get32(const unsigned char *p) {
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int send3(int sock, char kind, uint32_t a, uint32_t b) {
    unsigned char msg[9];
    msg[0] = kind; put32(msg + 1, a); put32(msg + 5, b);
    return send(sock, msg, kind == 'H' ? 1 : 9, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

static int connect_host(const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) return -1;
    strcpy(addr.sun_path, path);
    for (;;) {
        int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (sock < 0) return -1;
        if (connect(sock, (struct sockaddr *)&addr, sizeof addr) == 0) {
            if (send3(sock, 'H', 0, 0) == 0) return sock;
        }
        close(sock);
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
    }
}

static void hangup_all(void) {
    for (int i = 0; i < MAX_SESSIONS; i++)
        if (sessions[i].pid > 0) kill(-sessions[i].pid, SIGHUP);
}

static void spawn(int sock, unsigned char *msg, ssize_t len, int *fds, int nfds) {
    uint32_t id = get32(msg + 1), flags = get32(msg + 5);
    char *items[MAX_ITEMS + 2];
    int count = 0;
    char *p = (char *)msg + 9, *end = (char *)msg + len;
    while (p < end && count < MAX_ITEMS) { items[count++] = p; p += strnlen(p, end - p) + 1; }
    int argc = 0;
    while (argc < count && items[argc][0]) argc++;
    int env_start = argc + 1, envc = 0;
    while (env_start + envc < count && items[env_start + envc][0]) envc++;
    int cwd_at = env_start + envc + 1;
    int tty = flags & 1;
    int slot = -1;
    for (int i = 0; i < MAX_SESSIONS; i++) if (sessions[i].pid == 0) { slot = i; break; }
    if (argc == 0 || cwd_at >= count || slot < 0 || nfds != (tty ? 1 : 3)) {
        send3(sock, 'E', id, EINVAL);
        return;
    }
    char **argv = calloc(argc + 1, sizeof *argv), **envp = calloc(envc + 1, sizeof *envp);
    if (!argv || !envp) { free(argv); free(envp); send3(sock, 'E', id, ENOMEM); return; }
    for (int i = 0; i < argc; i++) argv[i] = items[i];
    for (int i = 0; i < envc; i++) envp[i] = items[env_start + i];
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) < 0) { free(argv); free(envp); send3(sock, 'E', id, errno); return; }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        int in = fds[0], out = tty ? fds[0] : fds[1], err = tty ? fds[0] : fds[2];
        if (tty) ioctl(in, TIOCSCTTY, 0);
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(127);
        if (chdir(items[cwd_at]) < 0 && chdir("/") < 0) _exit(127);
        environ = envp;
        execvp(argv[0], argv);
        int code = errno;
        (void)!write(errpipe[1], &code, sizeof code);
        _exit(127);
    }
    close(errpipe[1]);
    free(argv); free(envp);
    if (pid < 0) { close(errpipe[0]); send3(sock, 'E', id, errno); return; }
    int code = 0;
    ssize_t got = read(errpipe[0], &code, sizeof code);
    close(errpipe[0]);
    sessions[slot].id = id;
    sessions[slot].pid = pid;
    if (got == (ssize_t)sizeof code) send3(sock, 'E', id, code);
    else send3(sock, 'P', id, (uint32_t)pid);
}

static void reap(int sock) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_SESSIONS; i++) {
            if (sessions[i].pid == pid) {
                if (sock >= 0) send3(sock, 'X', sessions[i].id, (uint32_t)status);
                sessions[i].pid = 0;
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: stockade-agent SOCKET\n"); return 2; }
    /* Not dumpable: processes of the same uid (the workspace's users) can neither ptrace the
     * agent nor open its /proc/1/fd, where other sessions' terminals pass through. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    sigset_t mask;
    sigemptyset(&mask);
    /* Only SIGCHLD is taken through the signalfd. Every other signal keeps its default action,
     * which the kernel drops for PID 1 when it comes from inside the container (a blocked one
     * would be queued and read, letting any user stop the workspace); the host's stop still
     * terminates it, and the whole PID namespace with it. */
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) return 1;
    static unsigned char msg[MAX_MSG];
    for (;;) {
        int sock = connect_host(argv[1]);
        if (sock < 0) return 1;
        for (;;) {
            struct pollfd pfd[2] = {{sock, POLLIN, 0}, {sfd, POLLIN, 0}};
            if (poll(pfd, 2, -1) < 0) { if (errno == EINTR) continue; return 1; }
            if (pfd[1].revents & POLLIN) {
                struct signalfd_siginfo info;
                (void)!read(sfd, &info, sizeof info);
                reap(sock);
            }
            if (!(pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char control[CMSG_SPACE(sizeof(int) * 3)];
            struct iovec iov = {msg, sizeof msg - 1};
            struct msghdr hdr = {0};
            hdr.msg_iov = &iov; hdr.msg_iovlen = 1;
            hdr.msg_control = control; hdr.msg_controllen = sizeof control;
            ssize_t len = recvmsg(sock, &hdr, MSG_CMSG_CLOEXEC);
            if (len <= 0) break;
            int fds[3], nfds = 0;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&hdr); c; c = CMSG_NXTHDR(&hdr, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                    int n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                    for (int i = 0; i < n; i++) {
                        int fd;
                        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                        if (nfds < 3) fds[nfds++] = fd; else close(fd);
                    }
                }
            }
            msg[len] = 0;
            if (msg[0] == 'S' && len >= 9 && !(hdr.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
                spawn(sock, msg, len, fds, nfds);
            } else if (msg[0] == 'K' && len >= 9) {
                uint32_t id = get32(msg + 1);
                int signo = (int)get32(msg + 5);
                for (int i = 0; i < MAX_SESSIONS; i++)
                    if (sessions[i].pid > 0 && sessions[i].id == id) kill(-sessions[i].pid, signo);
            }
            for (int i = 0; i < nfds; i++) close(fds[i]);
        }
        close(sock);
        hangup_all();
        reap(-1);
    }
}
