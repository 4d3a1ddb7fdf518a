/* peak_rss PROGRAM [ARGUMENTS...]: runs PROGRAM (its stdout and stderr to /dev/null),
 * then prints "PEAK_KIB EXIT_STATUS" (its peak resident set in KiB, ru_maxrss; the
 * status -1 when it did not exit normally). Exits 0 when it ran, 1 when it could not
 * be started.
 *
 * Why a process of its own: at exec, Linux carries the peak of the memory image the
 * child leaves into the child's ru_maxrss, and a child that posix_spawn or fork makes
 * leaves its parent's image. Spawned from a test process that has loaded models, a
 * 105 MiB kvant-chat measured 418 MiB; spawned from this small process, its own peak. */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>

extern char** environ;

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: peak_rss PROGRAM [ARGUMENTS...]\n");
    return 2;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int e = posix_spawn(&pid, argv[1], &fa, NULL, argv + 1, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (e != 0) {
    fprintf(stderr, "peak_rss: cannot start %s (error %d)\n", argv[1], e);
    return 1;
  }
  int status = 0;
  struct rusage ru;
  if (wait4(pid, &status, 0, &ru) != pid) {
    fprintf(stderr, "peak_rss: lost %s\n", argv[1]);
    return 1;
  }
  printf("%ld %d\n", ru.ru_maxrss, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return 0;
}
