/*
 * hako-ksm-exec: runs a program with Linux's process-wide KSM setting
 * (prctl PR_SET_MEMORY_MERGE, Linux 6.4 and later) turned on or off.
 *
 *   hako-ksm-exec on|off PROGRAM [ARG...]
 *
 * With it on, KSM (when the host runs it) may merge all of the program's
 * private anonymous memory with identical pages elsewhere, not only the areas
 * the program marks MADV_MERGEABLE itself (QEMU marks guest RAM): QEMU's
 * heap and malloc arenas, libraries' relocated data, a node process's heap.
 * The kernel keeps the setting across execve and fork, so it is set here and
 * the program is exec'd. Node has no way to call prctl(2); this is the
 * smallest program that does (src/hypervisor/qemu/vmm-process.ts, the shim's
 * launcher in scripts/build.mjs).
 *
 * A kernel without it (EINVAL: before 6.4, or no CONFIG_KSM) has nothing to
 * merge: the program runs as it would have. Any other failure (EPERM: the
 * call needs CAP_SYS_RESOURCE) is written to stderr and the program still runs.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

int main(int argc, char **argv)
{
	if (argc < 3 || (strcmp(argv[1], "on") != 0 && strcmp(argv[1], "off") != 0)) {
		fprintf(stderr, "usage: hako-ksm-exec on|off PROGRAM [ARG...]\n");
		return 2;
	}
	int on = strcmp(argv[1], "on") == 0;
	if (prctl(PR_SET_MEMORY_MERGE, on, 0, 0, 0) != 0 && errno != EINVAL)
		fprintf(stderr, "hako-ksm-exec: cannot turn %s KSM for %s's whole memory: prctl(PR_SET_MEMORY_MERGE): %s\n",
			argv[1], argv[2], strerror(errno));
	execvp(argv[2], argv + 2);
	fprintf(stderr, "hako-ksm-exec: cannot run %s: %s\n", argv[2], strerror(errno));
	return 127;
}
