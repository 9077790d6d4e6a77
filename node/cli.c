/* Client commands. Filled in with replication (status, lag, wait). */
#include "cli.h"

#include <string.h>

#include "../common/banned.h"

int
cli_main(const char *cmd, int argc, char **argv)
{
    (void)cmd;
    (void)argc;
    (void)argv;
    return -1;
}
