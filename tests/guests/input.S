/* PS/2 input guest: sets up the i8042 for polling (translation on, no interrupts),
 * enables the mouse port and mouse reporting, prints "input ready", then echoes every
 * byte the controller delivers as "kbd XX" or "aux XX" (the status register's AUX bit
 * says which device sent it). */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	call ps2_setup			/* the mouse's ACK is echoed below */
	mov $s_ready, %esi
	call puts
1:	in $0x64, %al
	test $1, %al
	jz 1b
	mov %al, %bl
	in $0x60, %al
	mov %al, %cl
	mov $s_kbd, %esi
	test $0x20, %bl
	jz 2f
	mov $s_aux, %esi
2:	call puts
	mov %cl, %al
	shr $4, %al
	call hexdigit
	mov %cl, %al
	call hexdigit
	mov $'\n', %al
	call putc
	jmp 1b

/* hexdigit: print the low nibble of %al. */
hexdigit:
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 1f
	add $('a' - '0' - 10), %al
1:	jmp putc

#include "ps2.S"
#include "lib.S"

	.section .rodata
s_ready:	.asciz "input ready\n"
s_kbd:		.asciz "kbd "
s_aux:		.asciz "aux "

	.bss
	.align 16
	.space 4096
stack_top:
