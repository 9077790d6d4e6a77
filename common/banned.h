/* Functions that are easy to misuse become compile errors in georeg code. */
#ifndef GEOREG_BANNED_H
#define GEOREG_BANNED_H

#define BANNED_(f) sorry_##f##_is_banned_in_georeg

#undef strcpy
#define strcpy(x, y) BANNED_(strcpy)
#undef strcat
#define strcat(x, y) BANNED_(strcat)
#undef strncpy
#define strncpy(x, y, n) BANNED_(strncpy)
#undef sprintf
#define sprintf(...) BANNED_(sprintf)
#undef vsprintf
#define vsprintf(...) BANNED_(vsprintf)
#undef strtok
#define strtok(x, y) BANNED_(strtok)
#undef atoi
#define atoi(x) BANNED_(atoi)
#undef gmtime
#define gmtime(x) BANNED_(gmtime)
#undef localtime
#define localtime(x) BANNED_(localtime)

#endif
