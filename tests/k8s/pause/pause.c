/* The pod sandbox's process ("pause"): it holds the pod's namespaces open and does nothing.
 * No registry is reachable here, so the node (tests/k8s/node.sh) builds this as a static
 * binary in a FROM-scratch image instead of pulling registry.k8s.io/pause. It exits on SIGINT
 * or SIGTERM, and reaps children should it become a PID namespace's init. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
