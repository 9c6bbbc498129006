/* std-VGA guest: finds PCI 1234:1111, programs 1920x1080x32 through the DISPI ports
 * 0x1ce/0x1cf, paints a known picture into the BAR0 framebuffer with rep stosl (four
 * horizontal bands red, green, blue, white, 270 rows each, then a 100x100 square of
 * 0x00123456 at (100,100)), and prints the DISPI registers, a few pixels read back and
 * BAR2's DISPI/EDID words on COM1, then "vga done". The output is the same under QEMU's
 * -vga std, so it contains nothing placement-dependent (no slot, no BAR address).
 *
 * Built with -DBENCH it then serves latency probes: for every byte received on COM1 it
 * fills a 64x64 square at (0,0) with that byte in all three colour channels. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	xor %ebx, %ebx
1:	mov %ebx, %eax
	shl $11, %eax
	or $0x80000000, %eax
	mov %eax, cfg_base
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	cmp $0x11111234, %eax
	je found
	inc %ebx
	cmp $32, %ebx
	jb 1b
	mov $s_novga, %esi
	call puts
	jmp halt

found:
	mov $0x10, %eax
	call cfg_read
	and $0xfffffff0, %eax
	mov %eax, lfb
	mov $0x18, %eax
	call cfg_read
	and $0xfffffff0, %eax
	mov %eax, mmio
	/* Memory decoding on. */
	mov $0x04, %eax
	call cfg_read
	or $0x2, %eax
	mov %eax, %ecx
	mov $0x04, %eax
	call cfg_write
	mov $s_found, %esi
	call puts

	/* Mode 1920x1080x32, linear framebuffer. */
	mov $0, %ax
	mov $0xb0c5, %cx
	call dispi_write
	mov $4, %ax
	xor %cx, %cx
	call dispi_write
	mov $1, %ax
	mov $1920, %cx
	call dispi_write
	mov $2, %ax
	mov $1080, %cx
	call dispi_write
	mov $3, %ax
	mov $32, %cx
	call dispi_write
	mov $4, %ax
	mov $0x41, %cx
	call dispi_write

	/* Print DISPI registers 0..10. */
	xor %ebx, %ebx
2:	mov $s_dispi, %esi
	call puts
	mov %bl, %al
	call puthex8
	mov $' ', %al
	call putc
	mov %bx, %ax
	call dispi_read
	call puthex16
	mov $'\n', %al
	call putc
	inc %ebx
	cmp $11, %ebx
	jb 2b

	/* Paint four bands. */
	mov lfb, %edi
	mov $colours, %esi
	mov $4, %ebx
3:	lodsl
	mov $(1920 * 270), %ecx
	rep stosl
	dec %ebx
	jnz 3b
	/* The square: 100 rows of 100 pixels at (100, 100). */
	mov $100, %ebx
4:	mov %ebx, %eax
	add $99, %eax		/* rows 199 down to 100 */
	imul $(1920 * 4), %eax
	add lfb, %eax
	add $(100 * 4), %eax
	mov %eax, %edi
	mov $0x00123456, %eax
	mov $100, %ecx
	rep stosl
	dec %ebx
	jnz 4b

	/* Read back pixels. */
	mov $probes, %esi
5:	lodsl
	cmp $0xffffffff, %eax
	je 6f
	mov %eax, %ecx
	push %esi
	mov $s_pixel, %esi
	call puts
	mov %ecx, %eax
	call puthex32
	mov $' ', %al
	call putc
	mov %ecx, %eax
	shl $2, %eax
	add lfb, %eax
	mov (%eax), %eax
	call puthex32
	mov $'\n', %al
	call putc
	pop %esi
	jmp 5b

	/* BAR2: DISPI XRES at 0x502, EDID header at 0x000. */
6:	mov $s_mmio, %esi
	call puts
	mov mmio, %edi
	movzwl 0x502(%edi), %eax
	call puthex16
	mov $' ', %al
	call putc
	mov (%edi), %eax
	call puthex32
	mov $' ', %al
	call putc
	mov 4(%edi), %eax
	call puthex32
	mov $'\n', %al
	call putc
	mov $s_done, %esi
	call puts

#ifdef BENCH
	/* Latency probes: a byte on COM1 -> a 64x64 square of that grey. */
7:	mov $0x3fd, %dx
	in %dx, %al
	test $1, %al
	jz 7b
	mov $0x3f8, %dx
	in %dx, %al
	movzbl %al, %eax
	imul $0x010101, %eax
	mov $64, %ebx
	mov lfb, %edi
8:	mov $64, %ecx
	push %edi
	rep stosl
	pop %edi
	add $(1920 * 4), %edi
	dec %ebx
	jnz 8b
	jmp 7b
#endif
halt:
	cli
	hlt
	jmp halt

/* cfg_read: config dword at offset %eax of the device in cfg_base -> %eax. */
cfg_read:
	push %edx
	or cfg_base, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	pop %edx
	ret

/* cfg_write: %ecx to config dword at offset %eax. */
cfg_write:
	push %edx
	or cfg_base, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	mov %ecx, %eax
	out %eax, %dx
	pop %edx
	ret

/* dispi_write: register %ax = %cx. */
dispi_write:
	push %edx
	mov $0x1ce, %dx
	out %ax, %dx
	mov $0x1cf, %dx
	mov %cx, %ax
	out %ax, %dx
	pop %edx
	ret

/* dispi_read: register %ax -> %ax. */
dispi_read:
	push %edx
	mov $0x1ce, %dx
	out %ax, %dx
	mov $0x1cf, %dx
	in %dx, %ax
	pop %edx
	ret

#include "hex.S"
#include "lib.S"

	.section .rodata
	.align 4
colours:	.long 0x00ff0000, 0x0000ff00, 0x000000ff, 0x00ffffff
/* Pixel indices (y * 1920 + x) to read back. */
probes:		.long 0, 1920 * 300 + 5, 1920 * 600 + 1000, 1920 * 1079 + 1919
		.long 1920 * 150 + 150, 1920 * 100 + 99, 0xffffffff
s_novga:	.asciz "no std-vga\n"
s_found:	.asciz "std-vga 1234:1111\n"
s_dispi:	.asciz "dispi "
s_pixel:	.asciz "pixel "
s_mmio:		.asciz "mmio "
s_done:		.asciz "vga done\n"

	.data
	.align 4
cfg_base:	.long 0
lfb:		.long 0
mmio:		.long 0

	.bss
	.align 16
	.space 4096
stack_top:
