/*
 * The taskhive command: `taskhive serve` runs the daemon; every other verb is
 * a client of its HTTP API (docs/API.md).
 */
#include <stdio.h>
#include <string.h>

#include "server/server.h"

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return th__server_main(argc - 1, argv + 1);
    fprintf(stderr, "usage: taskhive serve [options]\n");
    return 2;
}
