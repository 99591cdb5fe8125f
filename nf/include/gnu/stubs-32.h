/* Empty on purpose.
 *
 * <linux/icmp.h> pulls in <linux/if.h>, which includes glibc's
 * <sys/socket.h>. With -I/usr/include/x86_64-linux-gnu and a BPF target,
 * __x86_64__ is not defined, so <gnu/stubs.h> asks for the 32-bit stub list
 * that multiarch x86_64 systems do not install. The stub list only declares
 * unimplemented libc functions, none of which BPF code uses, so an empty
 * file found first on the -I../include path is enough.
 */
