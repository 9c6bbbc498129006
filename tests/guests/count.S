/* Counting guest for save/restore: fills a pattern table, optionally dirties FILL_MIB MiB
 * of RAM from 16 MiB up (so a save has that much to write), then counts for ever: each
 * step increments a counter in memory, checks one pattern word (a lost or moved page
 * prints "bad"), and prints "count N" on COM1 after a short delay loop. A saved and
 * resumed run's two console files together read "count 1", "count 2", ... without a gap
 * or a repeat. */
#include "pvh_note.S"
#ifndef FILL_MIB
#define FILL_MIB 0
#endif
#ifndef DELAY
#define DELAY 2000
#endif
#define PATTERN_WORDS 16384		/* 64 KiB */
	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $pattern, %edi
	xor %eax, %eax
1:	mov %eax, %edx
	imul $0x9e3779b1, %edx, %edx
	mov %edx, (%edi)
	add $4, %edi
	inc %eax
	cmp $PATTERN_WORDS, %eax
	jb 1b
#if FILL_MIB > 0
	mov $0x1000000, %edi
	mov $(FILL_MIB * 262144), %ecx
	mov $0x5a5a5a5a, %eax
	cld
	rep stosl
#endif
	mov $s_ready, %esi
	call puts
step:
	incl count
	mov count, %eax
	mov %eax, %ebx
	and $(PATTERN_WORDS - 1), %ebx
	mov %ebx, %edx
	imul $0x9e3779b1, %edx, %edx
	cmp %edx, pattern(,%ebx,4)
	je 1f
	mov $s_bad, %esi
	call puts
1:	mov $s_count, %esi
	call puts
	call putdec
	mov $'\n', %al
	call putc
	mov $DELAY, %ecx
2:	loop 2b
	jmp step

#include "lib.S"

	.section .rodata
s_ready:	.asciz "ready\n"
s_count:	.asciz "count "
s_bad:		.asciz "bad pattern word\n"

	.data
	.align 4
count:	.long 0

	.bss
	.align 4096
pattern:
	.space PATTERN_WORDS * 4
	.space 4096
stack_top:
