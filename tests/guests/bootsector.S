/* A boot sector: what a BIOS hands an operating system, printed on COM1.
 *
 * The BIOS loads it at 0x7c00 and jumps to it in real mode with the boot drive in DL.
 * It prints, one item per line, on COM1 (port 0x3f8, no BIOS call, so the output is
 * the same under any firmware):
 *   BOOT drive=XX         the boot drive (0x80 first disk, 0xe0.. CD-ROM under SeaBIOS)
 *   INT12 XXXX            conventional memory in KiB (INT 12h)
 *   E820 BASE LEN TYPE    each entry of the INT 15h E820 memory map (hex)
 *   DONE
 * then powers off through the ACPI PM block (PM1a_CNT at PMBASE+4, SLP_TYP S5 | SLP_EN)
 * with PMBASE read from the ICH9 LPC bridge (00:1f.0 register 0x40), and halts if the
 * machine is still running.
 *
 * Built with -DVGA_TEXT it instead switches the screen through a VBE graphics mode of the
 * VGA BIOS (INT 10h 4F02h, mode 0x101, 640x480 in 256 colours) and back to text mode 3
 * (INT 10h 00h), writes a line of text straight into the VGA text buffer at 0xb8000
 * (white on blue, row 10), turns the hardware cursor off (CRTC 0x0a bit 5, so a
 * screenshot does not depend on the blink phase), prints DONE and halts, leaving the
 * screen for the test to look at. With -DVGA_MODE13 it sets mode 13h (320x200, 256
 * colours, chain-4) and fills four bands of colours 1, 2, 4 and 15 through 0xa0000.
 */
	.code16
	.text
	.globl _start
_start:
	cli
	xor %ax, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov $0x7c00, %sp
	mov %dl, drive

	mov $s_boot, %si
	call puts
	mov drive, %al
	call hex8
	call newline

	mov $s_int12, %si
	call puts
	int $0x12
	call hex16
	call newline

	/* INT 15h E820: EBX continuation, ES:DI buffer, EDX 'SMAP', ECX 20. */
	xor %ebx, %ebx
e820_next:
	mov $0xe820, %eax
	mov $0x534d4150, %edx
	mov $20, %ecx
	mov $buf, %di
	int $0x15
	jc e820_done
	cmp $0x534d4150, %eax
	jne e820_done
	push %ebx
	mov $s_e820, %si
	call puts
	mov buf+4, %eax
	call hex32
	mov buf, %eax
	call hex32
	call space
	mov buf+12, %eax
	call hex32
	mov buf+8, %eax
	call hex32
	call space
	mov buf+16, %al
	call hex8
	call newline
	pop %ebx
	test %ebx, %ebx
	jnz e820_next
e820_done:
#ifdef VGA_MODE13
	mov $0x0013, %ax
	int $0x10
	mov $0xa000, %ax
	mov %ax, %es
	xor %di, %di
	mov $bands, %si
5:	lodsb
	test %al, %al
	jz 6f
	mov $(320 * 50), %cx
	rep stosb
	jmp 5b
6:	mov $s_done, %si
	call puts
7:	hlt
	jmp 7b
#endif
#ifdef VGA_TEXT
	mov $0x4f02, %ax
	mov $0x0101, %bx
	int $0x10
	mov $0x0003, %ax
	int $0x10
	mov $0xb800, %ax
	mov %ax, %es
	mov $(10 * 160 + 20), %di
	mov $s_vga, %si
	mov $0x1f, %ah
2:	lodsb
	test %al, %al
	jz 3f
	stosw
	jmp 2b
3:	mov $0x3d4, %dx
	mov $0x0a, %al
	out %al, %dx
	inc %dx
	mov $0x20, %al
	out %al, %dx
	mov $s_done, %si
	call puts
4:	hlt
	jmp 4b
#endif
	mov $s_done, %si
	call puts

	/* PMBASE from 00:1f.0 register 0x40 (bits 15:7). */
	mov $0x8000f840, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %ax
	and $0xff80, %ax
	add $4, %ax
	mov %ax, %dx
	mov $(5 << 10 | 1 << 13), %ax
	out %ax, %dx
1:	hlt
	jmp 1b

/* Prints the NUL-terminated string at DS:SI. */
puts:
	lodsb
	test %al, %al
	jz 1f
	call putc
	jmp puts
1:	ret

newline:
	mov $'\n', %al
	jmp putc
space:
	mov $' ', %al
putc:
	push %dx
	mov $0x3f8, %dx
	out %al, %dx
	pop %dx
	ret

/* Hex of EAX (hex32), AX (hex16), AL (hex8). */
hex32:
	push %eax
	shr $16, %eax
	call hex16
	pop %eax
hex16:
	push %ax
	mov %ah, %al
	call hex8
	pop %ax
hex8:
	push %ax
	shr $4, %al
	call nibble
	pop %ax
nibble:
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe putc
	add $('A' - '9' - 1), %al
	jmp putc

s_boot:	.asciz "BOOT drive="
s_int12: .asciz "INT12 "
s_e820:	.asciz "E820 "
s_done:	.asciz "DONE\n"
#ifdef VGA_TEXT
s_vga:	.asciz "Hospes: legacy VGA text"
#endif
#ifdef VGA_MODE13
bands:	.byte 1, 2, 4, 15, 0
#endif
drive:	.byte 0
	.org 510
	.byte 0x55, 0xaa
buf:
