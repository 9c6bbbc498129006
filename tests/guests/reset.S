/* Reset guest: CMOS byte 0x40 (battery-backed, survives a reset) counts boots. First boot:
 * set it, print, reset through the i8042 (command 0xfe). Second boot: print, power off. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $0x40, %al
	out %al, $0x70
	in $0x71, %al
	test %al, %al
	jnz 1f
	mov $1, %al
	out %al, $0x71
	mov $s_first, %esi
	call puts
	mov $0xfe, %al
	out %al, $0x64
2:	cli
	hlt
	jmp 2b
1:	mov $s_second, %esi
	call puts
	jmp acpi_poweroff

#include "lib.S"

	.section .rodata
s_first:	.asciz "reset: first boot\n"
s_second:	.asciz "reset: second boot\n"

	.bss
	.align 16
	.space 4096
stack_top:
