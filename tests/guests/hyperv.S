/* Hyper-V guest: prints the hypervisor vendor at CPUID 0x40000000 and 0x40000100 with the
 * highest leaf each names, and, when the first is "Microsoft Hv", the feature and
 * recommendation words (0x40000003 EAX, 0x40000004 EAX/EBX) in hex; then powers off. */
#include "pvh_note.S"
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $0x40000000, %eax
	call print_vendor
	mov $0x40000100, %eax
	call print_vendor
	/* "Microsoft Hv" at the first leaf: print the enlightenments it announces. */
	mov $0x40000000, %eax
	cpuid
	cmp $0x7263694d, %ebx
	jne 1f
	mov $s_features, %esi
	call puts
	mov $0x40000003, %eax
	cpuid
	call puthex
	mov $s_recommend, %esi
	call puts
	mov $0x40000004, %eax
	cpuid
	push %ebx
	call puthex
	mov $' ', %al
	call putc
	pop %eax
	call puthex
	mov $'\n', %al
	call putc
1:	jmp acpi_poweroff

/* print_vendor: CPUID leaf %eax: "<leaf>: <12-byte vendor> max <eax>\n". */
print_vendor:
	push %eax
	call puthex
	mov $s_colon, %esi
	call puts
	pop %eax
	cpuid
	mov %ebx, vendor
	mov %ecx, vendor + 4
	mov %edx, vendor + 8
	push %eax
	mov $vendor, %esi
	mov $12, %ecx
	call putn_printable
	mov $s_max, %esi
	call puts
	pop %eax
	call puthex
	mov $'\n', %al
	call putc
	ret

/* putn_printable: print %ecx bytes at %esi, NUL and other non-printing bytes as '.'. */
putn_printable:
1:	lodsb
	cmp $0x20, %al
	jb 2f
	cmp $0x7e, %al
	jbe 3f
2:	mov $'.', %al
3:	call putc
	loop 1b
	ret

/* puthex: print %eax as 8 hex digits. */
puthex:
	push %ecx
	push %eax
	mov $8, %ecx
1:	rol $4, %eax
	push %eax
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 2f
	add $('a' - '9' - 1), %al
2:	call putc
	pop %eax
	loop 1b
	pop %eax
	pop %ecx
	ret

#include "lib.S"

	.section .rodata
s_colon:	.asciz ": "
s_max:		.asciz " max "
s_features:	.asciz "features "
s_recommend:	.asciz " recommend "

	.bss
	.align 16
vendor:	.space 16
stack:	.space 4096
stack_top:
