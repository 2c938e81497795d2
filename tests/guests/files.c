/* Files in the data tree: create, write, read back, rename, list, unlink. Host untouched. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp/fx86-files-test";
    char path[512], path2[512];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/a.txt", dir);
    FILE *f = fopen(path, "w"); for (int i = 0; i < 1000; i++) fprintf(f, "line %d\n", i); fclose(f);
    struct stat st; stat(path, &st); printf("size %lld mode %o\n", (long long)st.st_size, st.st_mode & 0777);
    int fd = open(path, O_RDWR); lseek(fd, 5, SEEK_SET); write(fd, "XYZ", 3); lseek(fd, 0, SEEK_SET);
    char buf[32] = {0}; read(fd, buf, 12); close(fd); printf("read [%s]\n", buf);
    snprintf(path2, sizeof path2, "%s/b.txt", dir); rename(path, path2);
    printf("old exists %d new exists %d\n", access(path, F_OK) == 0, access(path2, F_OK) == 0);
    DIR *d = opendir(dir); int n = 0; struct dirent *e; while ((e = readdir(d))) n += e->d_name[0] != '.'; closedir(d);
    printf("entries %d\n", n);
    FILE *g = fopen("/etc/passwd", "r"); printf("passwd readable %d\n", g != NULL); if (g) fclose(g);
    unlink(path2); rmdir(dir);
    printf("after cleanup %d\n", access(dir, F_OK) == 0);
    char cwd[256]; printf("cwd ok %d\n", getcwd(cwd, sizeof cwd) != NULL);
    return 0;
}
