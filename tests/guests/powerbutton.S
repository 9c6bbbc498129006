/* Power-button guest: enables the ACPI power button event, says it is waiting, polls
 * PM1_STS until the button is pressed (QMP system_powerdown / VmHandle::powerdown), then
 * acknowledges it and powers off. Ports from the FADT layout of hospes-vmm (0x600). */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $0x602, %dx			/* PM1_EN */
	mov $0x100, %ax			/* PWRBTN_EN */
	out %ax, %dx
	mov $s_wait, %esi
	call puts
	mov $0x600, %dx			/* PM1_STS */
1:	in %dx, %ax
	test $0x100, %ax
	jnz 2f
	pause
	jmp 1b
2:	out %ax, %dx			/* write 1 to clear */
	mov $s_pressed, %esi
	call puts
	jmp acpi_poweroff

#include "lib.S"

	.section .rodata
s_wait:		.asciz "waiting for the power button\n"
s_pressed:	.asciz "power button pressed\n"

	.bss
	.align 16
	.space 4096
stack_top:
