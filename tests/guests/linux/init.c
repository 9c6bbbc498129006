/* A freestanding /init for the slow tier's Linux boots: mounts /proc and /sys, prints how
 * many CPUs Linux brought online and the kernel's version line, then powers the machine
 * off through reboot(2) (ACPI S5 on hospes-vmm). No libc: raw x86-64 system calls. */

typedef unsigned long u64;

static long sys(long n, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}

enum { SYS_read = 0, SYS_write = 1, SYS_open = 2, SYS_close = 3, SYS_mount = 165,
       SYS_reboot = 169, SYS_exit = 60 };

static u64 len(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

static void say(const char *s)
{
	sys(SYS_write, 1, (long)s, (long)len(s), 0, 0);
}

/* Prints "<label><first line of path>\n". */
static void show_file(const char *label, const char *path)
{
	char buf[256];
	long fd = sys(SYS_open, (long)path, 0, 0, 0, 0);
	long n = fd < 0 ? -1 : sys(SYS_read, fd, (long)buf, sizeof(buf) - 1, 0, 0);
	if (n <= 0) {
		say(label);
		say("(unreadable)\n");
		return;
	}
	sys(SYS_close, fd, 0, 0, 0, 0);
	for (long i = 0; i < n; i++)
		if (buf[i] == '\n')
			n = i;
	buf[n] = '\n';
	buf[n + 1] = 0;
	say(label);
	say(buf);
}

void _start(void)
{
	sys(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
	sys(SYS_mount, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0);
	say("hospes-init: started\n");
	show_file("hospes-init: cpus online ", "/sys/devices/system/cpu/online");
	show_file("hospes-init: ", "/proc/version");
	say("hospes-init: powering off\n");
	/* LINUX_REBOOT_MAGIC1, MAGIC2, LINUX_REBOOT_CMD_POWER_OFF */
	sys(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0, 0);
	sys(SYS_exit, 1, 0, 0, 0, 0);
	for (;;)
		;
}
