/* A freestanding /init for the slow tier's Linux boots: mounts /proc and /sys, prints how
 * many CPUs Linux brought online and the kernel's version line, then powers the machine
 * off through reboot(2) (ACPI S5 on hospes-vmm). No libc: raw x86-64 system calls.
 *
 * Two optional steps, for the USB boots (tests/tests/slow_usb.rs):
 * - Modules: when /mods exists, each line names a module file in the initramfs, in load
 *   order (dependencies first); each is loaded with finit_module(2), compressed ones
 *   (.xz, .zst, .gz) with MODULE_INIT_COMPRESSED_FILE so the kernel decompresses them.
 *   Prints "hospes-init: loaded NAME" or "hospes-init: failed NAME errno N".
 * - Lingering: when /proc/cmdline has hospes.linger=N (a dotted parameter, which the
 *   kernel keeps out of init's argv and environment), prints "hospes-init: lingering N s"
 *   and stays up N seconds before powering off. It lists what the kernel enumerated then,
 *   again whenever that changes (polled every 250 ms), and once more after
 *   "hospes-init: linger over":
 *     hospes-init: /sys/bus/usb/devices:
 *     hospes-init: usb NAME VID:PID DRIVER PRODUCT   (- for what an entry lacks)
 *     hospes-init: input N: Name="..."                (from /proc/bus/input/devices)
 * Every line leaves in one write(2), so the kernel's console messages cannot split it. */

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

enum { SYS_read = 0, SYS_write = 1, SYS_open = 2, SYS_close = 3, SYS_nanosleep = 35,
       SYS_exit = 60, SYS_readlink = 89, SYS_mount = 165, SYS_reboot = 169,
       SYS_getdents64 = 217, SYS_finit_module = 313 };

/* open(2) flags (asm-generic/fcntl.h). */
enum { O_RDONLY = 0, O_DIRECTORY = 0x10000, O_CLOEXEC = 0x80000 };

/* finit_module(2) flag: the file is compressed, the kernel decompresses it (Linux 5.17+). */
enum { MODULE_INIT_COMPRESSED_FILE = 4 };

enum { EEXIST = 17 };

/* Where the USB core lists every device and interface. */
static const char USB_DEVICES[] = "/sys/bus/usb/devices";

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

/* A line built up and written at once. */
struct line {
	char buf[600];
	u64 n;
};

static void put_n(struct line *l, const char *s, u64 n)
{
	for (u64 i = 0; i < n && s[i] && l->n < sizeof(l->buf) - 1; i++)
		l->buf[l->n++] = s[i];
}

static void put(struct line *l, const char *s)
{
	put_n(l, s, len(s));
}

static void put_num(struct line *l, long v)
{
	char digits[24];
	int n = 0;
	if (v < 0) {
		put(l, "-");
		v = -v;
	}
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v && n < (int)sizeof(digits));
	while (n)
		put_n(l, &digits[--n], 1);
}

static void flush(struct line *l)
{
	l->buf[l->n++] = '\n';
	sys(SYS_write, 1, (long)l->buf, (long)l->n, 0, 0);
	l->n = 0;
}

/* Reads all of path (up to cap - 1 bytes) into buf, NUL-terminated; the length, or a
 * negative errno. */
static long read_all(const char *path, char *buf, u64 cap)
{
	long fd = sys(SYS_open, (long)path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
	if (fd < 0)
		return fd;
	u64 n = 0;
	while (n < cap - 1) {
		long r = sys(SYS_read, fd, (long)(buf + n), (long)(cap - 1 - n), 0, 0);
		if (r <= 0)
			break;
		n += (u64)r;
	}
	sys(SYS_close, fd, 0, 0, 0, 0);
	buf[n] = 0;
	return (long)n;
}

/* Cuts s at its first newline. */
static void first_line(char *s)
{
	for (u64 i = 0; s[i]; i++)
		if (s[i] == '\n') {
			s[i] = 0;
			return;
		}
}

/* Prints "<label><first line of path>\n". */
static void show_file(const char *label, const char *path)
{
	char buf[256];
	struct line l;
	l.n = 0;
	put(&l, label);
	if (read_all(path, buf, sizeof(buf)) <= 0) {
		put(&l, "(unreadable)");
	} else {
		first_line(buf);
		put(&l, buf);
	}
	flush(&l);
}

static int starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

static int ends_with(const char *s, const char *suffix)
{
	u64 n = len(s), m = len(suffix);
	return n >= m && starts_with(s + n - m, suffix);
}

static const char *basename(const char *path)
{
	const char *base = path;
	for (; *path; path++)
		if (*path == '/')
			base = path + 1;
	return base;
}

/* out = a + b + c, cut to cap - 1 bytes. */
static void join(char *out, u64 cap, const char *a, const char *b, const char *c)
{
	const char *parts[3] = { a, b, c };
	u64 n = 0;
	for (int p = 0; p < 3; p++)
		for (const char *s = parts[p]; *s && n < cap - 1; s++)
			out[n++] = *s;
	out[n] = 0;
}

/* Loads every module /mods names, in order. */
static void load_modules(void)
{
	static char list[8192];
	if (read_all("/mods", list, sizeof(list)) < 0)
		return;
	char *p = list;
	while (*p) {
		char *path = p;
		while (*p && *p != '\n')
			p++;
		if (*p)
			*p++ = 0;
		if (!*path)
			continue;
		int compressed = ends_with(path, ".xz") || ends_with(path, ".zst") ||
				 ends_with(path, ".gz");
		long fd = sys(SYS_open, (long)path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
		long r = fd;
		if (fd >= 0) {
			r = sys(SYS_finit_module, fd, (long)"",
				compressed ? MODULE_INIT_COMPRESSED_FILE : 0, 0, 0);
			sys(SYS_close, fd, 0, 0, 0, 0);
		}
		struct line l;
		l.n = 0;
		if (r == 0 || r == -EEXIST) {
			put(&l, "hospes-init: loaded ");
			put(&l, basename(path));
		} else {
			put(&l, "hospes-init: failed ");
			put(&l, basename(path));
			put(&l, " errno ");
			put_num(&l, -r);
		}
		flush(&l);
	}
}

/* N from hospes.linger=N on the kernel command line, or 0. */
static long linger_seconds(void)
{
	static const char key[] = "hospes.linger=";
	char cmdline[2048];
	if (read_all("/proc/cmdline", cmdline, sizeof(cmdline)) <= 0)
		return 0;
	for (u64 i = 0; cmdline[i]; i++) {
		if ((i == 0 || cmdline[i - 1] == ' ') && starts_with(cmdline + i, key)) {
			long n = 0;
			for (const char *d = cmdline + i + sizeof(key) - 1; *d >= '0' && *d <= '9'; d++)
				n = n * 10 + (*d - '0');
			return n;
		}
	}
	return 0;
}

static void sleep_ms(long ms)
{
	struct {
		long sec, nsec;
	} ts = { ms / 1000, (ms % 1000) * 1000000 };
	sys(SYS_nanosleep, (long)&ts, 0, 0, 0, 0);
}

/* Folds s into the running FNV-1a hash h. */
static u64 hash(u64 h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3UL;
	return h;
}

/* Prints one /sys/bus/usb/devices entry: name, VID:PID, driver, product. */
static void show_usb_entry(const char *name)
{
	char dir[128], path[160], buf[256];
	struct line l;
	l.n = 0;
	join(dir, sizeof(dir), USB_DEVICES, "/", name);
	put(&l, "hospes-init: usb ");
	put(&l, name);
	put(&l, " ");
	join(path, sizeof(path), dir, "/", "idVendor");
	if (read_all(path, buf, sizeof(buf)) > 0) {
		first_line(buf);
		put(&l, buf);
		put(&l, ":");
		join(path, sizeof(path), dir, "/", "idProduct");
		if (read_all(path, buf, sizeof(buf)) > 0) {
			first_line(buf);
			put(&l, buf);
		}
	} else {
		put(&l, "-");
	}
	put(&l, " ");
	join(path, sizeof(path), dir, "/", "driver");
	long n = sys(SYS_readlink, (long)path, (long)buf, sizeof(buf) - 1, 0, 0);
	if (n > 0) {
		buf[n] = 0;
		put(&l, basename(buf));
	} else {
		put(&l, "-");
	}
	put(&l, " ");
	join(path, sizeof(path), dir, "/", "product");
	if (read_all(path, buf, sizeof(buf)) > 0) {
		first_line(buf);
		put(&l, buf);
	} else {
		put(&l, "-");
	}
	flush(&l);
}

/* Walks /sys/bus/usb/devices and /proc/bus/input/devices' name lines, printing them when
 * show is set; returns a hash of what it saw, to notice changes. */
static u64 usb_state(int show)
{
	static char dents[8192];
	static char inputs[16384];
	u64 h = 0xcbf29ce484222325UL;
	if (show)
		say("hospes-init: /sys/bus/usb/devices:\n");
	long fd = sys(SYS_open, (long)USB_DEVICES, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, 0, 0);
	for (;;) {
		long n = fd < 0 ? 0 : sys(SYS_getdents64, fd, (long)dents, sizeof(dents), 0, 0);
		if (n <= 0)
			break;
		for (long off = 0; off < n;) {
			/* struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name */
			unsigned short reclen = *(unsigned short *)(dents + off + 16);
			const char *name = dents + off + 19;
			if (name[0] != '.') {
				h = hash(h, name);
				h = hash(h, "/");
				if (show)
					show_usb_entry(name);
			}
			off += reclen;
		}
	}
	if (fd >= 0)
		sys(SYS_close, fd, 0, 0, 0, 0);
	if (read_all("/proc/bus/input/devices", inputs, sizeof(inputs)) > 0) {
		char *p = inputs;
		while (*p) {
			char *entry = p;
			while (*p && *p != '\n')
				p++;
			if (*p)
				*p++ = 0;
			if (starts_with(entry, "N: Name=")) {
				h = hash(h, entry);
				if (show) {
					struct line l;
					l.n = 0;
					put(&l, "hospes-init: input ");
					put(&l, entry);
					flush(&l);
				}
			}
		}
	}
	return h;
}

/* Stays up for hospes.linger=N seconds, listing USB devices and inputs as they change. */
static void linger(void)
{
	long seconds = linger_seconds();
	if (seconds <= 0)
		return;
	struct line l;
	l.n = 0;
	put(&l, "hospes-init: lingering ");
	put_num(&l, seconds);
	put(&l, " s");
	flush(&l);
	u64 seen = usb_state(1);
	for (long tick = 0; tick < seconds * 4; tick++) {
		sleep_ms(250);
		if (usb_state(0) != seen)
			seen = usb_state(1);
	}
	say("hospes-init: linger over\n");
	usb_state(1);
}

__attribute__((force_align_arg_pointer)) void _start(void)
{
	sys(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
	sys(SYS_mount, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0);
	say("hospes-init: started\n");
	show_file("hospes-init: cpus online ", "/sys/devices/system/cpu/online");
	show_file("hospes-init: ", "/proc/version");
	load_modules();
	linger();
	say("hospes-init: powering off\n");
	/* LINUX_REBOOT_MAGIC1, MAGIC2, LINUX_REBOOT_CMD_POWER_OFF */
	sys(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0, 0);
	sys(SYS_exit, 1, 0, 0, 0, 0);
	for (;;)
		;
}
