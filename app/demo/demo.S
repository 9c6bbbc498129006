/* Hospes Demo guest.
 *
 * A few hundred instructions that need no disk and no ISO: the app ships this guest so a
 * newcomer sees a running VM at once. It finds the std-VGA adapter (PCI 1234:1111), sets
 * 1280x800x32 through the DISPI ports 0x1ce/0x1cf and paints a test card into the linear
 * framebuffer with rep stosl: eight colour bars, a blue band, and a black strip below.
 * Then it polls the PS/2 controller (status 0x64, data 0x60) and, for every key pressed,
 * draws a bar in the strip whose colour comes from the key's scancode, and prints
 * "key XX" on COM1. Only `rep stosl`, port I/O and plain ALU instructions: guest code
 * runs at a few million instructions a second on machines without hardware
 * virtualization, and the bars take about 50 000 of them.
 */
#define WIDTH		1280
#define HEIGHT		800
#define BARS_H		560
#define BAND_H		60
#define STRIP_Y		(BARS_H + BAND_H)
#define KEY_Y		(STRIP_Y + 30)
#define KEY_W		32
#define KEY_H		120
#define KEY_STEP	40
#define KEYS_PER_ROW	31
#define COM1		0x3f8

	.section .note.pvh, "a"
	.align 4
	.long 4			/* name size */
	.long 4			/* descriptor size */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.align 4
	.long _start

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	cld
	mov $s_hello, %esi
	call puts

	/* Find the adapter on bus 0. */
	xor %ebx, %ebx
1:	mov %ebx, %eax
	shl $11, %eax
	or $0x80000000, %eax
	mov %eax, cfg_base
	xor %eax, %eax
	call cfg_read
	cmp $0x11111234, %eax
	je 2f
	inc %ebx
	cmp $32, %ebx
	jb 1b
	mov $s_novga, %esi
	call puts
	jmp keys

2:	mov $0x10, %eax			/* BAR0: the linear framebuffer */
	call cfg_read
	and $0xfffffff0, %eax
	mov %eax, lfb
	mov $0x04, %eax			/* command: memory decoding on */
	call cfg_read
	or $0x2, %eax
	mov %eax, %ecx
	mov $0x04, %eax
	call cfg_write

	xor %ecx, %ecx			/* DISPI: disable, set the mode, enable with LFB */
	mov $4, %eax
	call dispi_write
	mov $WIDTH, %ecx
	mov $1, %eax
	call dispi_write
	mov $HEIGHT, %ecx
	mov $2, %eax
	call dispi_write
	mov $32, %ecx
	mov $3, %eax
	call dispi_write
	mov $0x41, %ecx
	mov $4, %eax
	call dispi_write

	/* Colour bars: every row is eight runs of WIDTH/8 pixels. */
	mov lfb, %edi
	mov $BARS_H, %edx
3:	mov $bar_colours, %esi
	mov $8, %ebx
4:	lodsl
	mov $(WIDTH / 8), %ecx
	rep stosl
	dec %ebx
	jnz 4b
	dec %edx
	jnz 3b
	/* The band, then the black strip. */
	mov $0x001c71d8, %eax
	mov $(WIDTH * BAND_H), %ecx
	rep stosl
	xor %eax, %eax
	mov $(WIDTH * (HEIGHT - STRIP_Y)), %ecx
	rep stosl
	mov $s_drawn, %esi
	call puts

keys:
	mov $0xf4, %al			/* keyboard: enable scanning (answers ACK) */
	out %al, $0x60
5:	in $0x64, %al
	test $0x01, %al
	jz 6f
	mov %al, %bl
	in $0x60, %al
	test $0x20, %bl			/* mouse byte: ignore */
	jnz 5b
	cmp $0xfa, %al			/* ACK */
	je 5b
	cmp $0xe0, %al			/* extended-key prefix */
	je 5b
	test $0x80, %al			/* key release */
	jnz 5b
	call key
	jmp 5b
6:	pause
	jmp 5b

/* key: %al = set-1 make code. Prints it and draws the next bar. */
key:
	movzbl %al, %ebx
	mov $s_key, %esi
	call puts
	mov %bl, %al
	call puthex8
	mov $'\n', %al
	call putc
	mov lfb, %edi
	test %edi, %edi
	jz 9f
	mov key_count, %eax
	cmp $KEYS_PER_ROW, %eax
	jb 7f
	/* The strip is full: clear it and start again at the left. */
	push %edi
	add $(STRIP_Y * WIDTH * 4), %edi
	xor %eax, %eax
	mov $(WIDTH * (HEIGHT - STRIP_Y)), %ecx
	rep stosl
	pop %edi
	xor %eax, %eax
7:	lea 1(%eax), %ecx
	mov %ecx, key_count
	imul $(KEY_STEP * 4), %eax
	add $((KEY_Y * WIDTH + 16) * 4), %eax
	add %eax, %edi
	/* Colour: the scancode spread over the three channels, kept bright. */
	imul $0x9e3779b1, %ebx, %eax
	shr $8, %eax
	or $0x00404040, %eax
	mov $KEY_H, %edx
8:	mov $KEY_W, %ecx
	rep stosl
	add $((WIDTH - KEY_W) * 4), %edi
	dec %edx
	jnz 8b
9:	ret

/* cfg_read: %eax = config dword at offset %eax of the adapter. */
cfg_read:
	or cfg_base, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	ret

/* cfg_write: config dword at offset %eax = %ecx. */
cfg_write:
	or cfg_base, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov %ecx, %eax
	mov $0xcfc, %dx
	out %eax, %dx
	ret

/* dispi_write: DISPI register %ax = %cx. */
dispi_write:
	mov $0x1ce, %dx
	out %ax, %dx
	mov %cx, %ax
	mov $0x1cf, %dx
	out %ax, %dx
	ret

/* putc: %al to COM1, once the transmitter is empty. */
putc:
	push %eax
	mov $(COM1 + 5), %dx
1:	in %dx, %al
	test $0x20, %al
	jz 1b
	pop %eax
	mov $COM1, %dx
	out %al, %dx
	ret

/* puts: the NUL-terminated string at %esi. */
puts:
	lodsb
	test %al, %al
	jz 1f
	call putc
	jmp puts
1:	ret

/* puthex8: %al as two hex digits. */
puthex8:
	push %eax
	shr $4, %al
	call puthex4
	pop %eax
puthex4:
	and $0x0f, %al
	add $'0', %al
	cmp $'9', %al
	jbe 1f
	add $('a' - '0' - 10), %al
1:	jmp putc

	.section .rodata
	.align 4
bar_colours:	/* 75% bars: white, yellow, cyan, green, magenta, red, blue, black */
	.long 0x00c0c0c0, 0x00c0c000, 0x0000c0c0, 0x0000c000
	.long 0x00c000c0, 0x00c00000, 0x000000c0, 0x00000000
s_hello:	.asciz "Hospes demo guest\n"
s_novga:	.asciz "no std-VGA adapter; type keys and watch this console\n"
s_drawn:	.asciz "test card drawn; press keys in the window\n"
s_key:		.asciz "key "

	.bss
	.align 16
cfg_base:	.space 4
lfb:		.space 4
key_count:	.space 4
	.space 4096
stack_top:
