/* Echo guest: reads one line from COM1 (polling LSR data-ready), then prints
 * "got: <line>" and powers off. Exercises the host-to-guest side of the console. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $s_ready, %esi
	call puts
	mov $line, %edi
1:	mov $0x3fd, %dx
2:	in %dx, %al
	test $0x01, %al
	jz 2b
	mov $0x3f8, %dx
	in %dx, %al
	cmp $'\n', %al
	je 3f
	cmp $(line_end - 1), %edi
	jae 1b
	stosb
	jmp 1b
3:	movb $0, (%edi)
	mov $s_got, %esi
	call puts
	mov $line, %esi
	call puts
	mov $'\n', %al
	call putc
	jmp acpi_poweroff

#include "lib.S"

	.section .rodata
s_ready:	.asciz "type a line\n"
s_got:		.asciz "got: "

	.bss
	.align 16
line:	.space 64
line_end:
	.space 4096
stack_top:
