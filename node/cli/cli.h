/* Client-side commands (status, lag, wait, and the admin commands) that talk to a
 * running node's HTTP API with libcurl. */
#ifndef GEOREG_CLI_H
#define GEOREG_CLI_H

/* cli_main runs command cmd with its arguments; returns the exit code, or -1 when
 * cmd is not a client command. */
int cli_main(const char *cmd, int argc, char **argv);

#endif
